package netutil_test

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

func ExampleGetBuffer() {
	b := netutil.GetBuffer(3000)
	fmt.Println(len(b), cap(b))
	netutil.PutBuffer(b)
	// Output: 3000 4096
}

// JoinIdle relays like Join and closes the pair once nothing moved for the
// idle timeout.
func ExampleJoinIdle() {
	client, a := net.Pipe()
	b, server := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, _, err := netutil.JoinIdle(a, b, 50*time.Millisecond)
		done <- err
	}()
	go client.Write([]byte("hi"))
	buf := make([]byte, 2)
	io.ReadFull(server, buf)
	fmt.Println(string(buf))
	// Nothing more is sent: the pair is closed for idleness.
	fmt.Println(<-done)
	// Output:
	// hi
	// netutil: idle timeout
}
