package spire_test

import (
	"context"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/spire"
)

// A server that takes its certificate from a SPIRE agent.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := spire.New(ctx, spire.Config{Addr: "unix:///run/spire/sockets/agent.sock"})
	if err != nil {
		return // no SPIRE agent here
	}
	defer src.Close()
	_ = identity.ServerTLSConfig(src)
}
