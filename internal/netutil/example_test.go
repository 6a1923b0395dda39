package netutil_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

func ExampleGetBuffer() {
	b := netutil.GetBuffer(3000)
	fmt.Println(len(b), cap(b))
	netutil.PutBuffer(b)
	// Output: 3000 4096
}
