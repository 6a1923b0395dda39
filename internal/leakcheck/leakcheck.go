// Package leakcheck fails a test that leaves goroutines behind.
//
// Call Check at the start of a test: it records the goroutines that exist
// then, and at cleanup waits a short while for every goroutine started since
// to exit. Goroutines that are still running afterwards are reported with
// their stacks. The package needs no dependency beyond the runtime.
package leakcheck

import (
	"bytes"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Wait is how long Check waits for new goroutines to exit.
const Wait = 5 * time.Second

// ignored lists functions whose goroutines belong to the runtime, the
// testing package or long-lived standard library helpers rather than to the
// code under test.
var ignored = []string{
	"testing.(*T).Run",
	"testing.(*F).Fuzz",
	"testing.RunTests",
	"testing.runTests",
	"testing.(*M).",
	"testing.tRunner",
	"testing/synctest.",
	"runtime.goexit",
	"created by runtime.gc",
	"runtime.MHeap_Scavenger",
	"signal.signal_recv",
	"os/signal.loop",
	"created by testing.",
	"created by os/signal.Notify",
	"created by net/http.(*Transport).dialConn", // idle keep-alive conns owned by http.DefaultTransport
}

// Check registers a cleanup on t that fails the test if goroutines started
// during the test are still running Wait after it ends.
func Check(t testing.TB) {
	t.Helper()
	before := snapshot()
	t.Cleanup(func() {
		deadline := time.Now().Add(Wait)
		var leaked []string
		for {
			leaked = leaked[:0]
			for id, stack := range snapshot() {
				if _, ok := before[id]; ok || isIgnored(stack) {
					continue
				}
				leaked = append(leaked, stack)
			}
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		sort.Strings(leaked)
		t.Errorf("leakcheck: %d goroutine(s) leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	})
}

func isIgnored(stack string) bool {
	// The first line is "goroutine N [state]:"; the creator is named on
	// the "created by" line. A goroutine is ignored when the function it
	// runs or the one that created it is on the list.
	lines := strings.Split(stack, "\n")
	if len(lines) < 2 {
		return true
	}
	top := lines[1]
	creator := ""
	for _, l := range lines {
		if strings.HasPrefix(l, "created by ") {
			creator = l
		}
	}
	for _, ig := range ignored {
		if strings.HasPrefix(ig, "created by ") {
			if strings.HasPrefix(creator, ig) {
				return true
			}
			continue
		}
		if strings.HasPrefix(top, ig) {
			return true
		}
	}
	// The goroutine running this cleanup, and the test's own.
	return strings.Contains(stack, "leakcheck.snapshot") || strings.Contains(stack, "testing.tRunner")
}

func snapshot() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := make(map[string]string)
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if !strings.HasPrefix(s, "goroutine ") {
			continue
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(s, "goroutine "), " ")
		out[id] = s
	}
	return out
}
