// Package yamldoc splits multi-document YAML streams, as kubectl reads
// them, for the packages that decode Istio and Gateway API objects.
package yamldoc

import (
	"bytes"
	"slices"
)

// Split splits data at document separator lines: a line that is "---",
// optionally followed by a space and anything else (a comment, or a
// "--- !tag"), with trailing blanks and CR ignored. Documents that hold
// only white space are dropped. A "---" inside a block scalar is not a
// separator only when it is indented, which is how YAML itself reads it.
func Split(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(cur.Bytes())) > 0 {
			docs = append(docs, slices.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		t := bytes.TrimRight(line, " \t\r\n")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) || bytes.HasPrefix(t, []byte("---\t")) {
			flush()
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}
