package hbone_test

import (
	"os"
	"testing"

	"github.com/meshblocks/meshblocks/identity/identitytest"
)

func hbonetestCA(t *testing.T, td string) *identitytest.CA { return identitytest.NewCA(t, td) }

func os_ErrDeadlineExceeded() error { return os.ErrDeadlineExceeded }
