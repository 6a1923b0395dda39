package route_test

import (
	"path/filepath"
	"testing"

	"github.com/meshblocks/meshblocks/route/routetest"
)

func TestRouteFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	routetest.Test(t, files...)
}
