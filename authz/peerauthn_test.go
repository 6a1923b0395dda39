package authz_test

import (
	"path/filepath"
	"testing"

	"github.com/meshblocks/meshblocks/authz/authztest"
)

func TestPeerAuthnSuites(t *testing.T) {
	files, err := filepath.Glob("testdata/peerauthn/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no suites: %v", err)
	}
	authztest.RunT(t, files...)
}
