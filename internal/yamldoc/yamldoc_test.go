package yamldoc_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/yamldoc"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"blank only", "\n  \n---\n\n", nil},
		{"one document", "a: 1\n", []string{"a: 1\n"}},
		{"leading separator", "---\na: 1\n", []string{"a: 1\n"}},
		{"two documents", "a: 1\n---\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"separator with comment", "a: 1\n--- # next\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"separator with tab", "a: 1\n---\tx\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"crlf", "a: 1\r\n---\r\nb: 2\r\n", []string{"a: 1\r\n", "b: 2\r\n"}},
		{"trailing blanks on separator", "a: 1\n---   \nb: 2", []string{"a: 1\n", "b: 2"}},
		{"empty document between", "a: 1\n---\n---\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"indented dashes are content", "a: |\n  ---\n  x\n", []string{"a: |\n  ---\n  x\n"}},
		{"four dashes are content", "----\n", []string{"----\n"}},
		{"document end marker kept", "a: 1\n...\n", []string{"a: 1\n...\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, d := range yamldoc.Split([]byte(tc.in)) {
				got = append(got, string(d))
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func FuzzSplit(f *testing.F) {
	f.Add([]byte("a: 1\n---\nb: 2\n"))
	f.Add([]byte("--- # c\n---\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		docs := yamldoc.Split(in)
		total := 0
		for _, d := range docs {
			if len(bytes.TrimSpace(d)) == 0 {
				t.Fatalf("blank document %q returned", d)
			}
			if !bytes.Contains(in, d) {
				t.Fatalf("document %q is not a slice of the input", d)
			}
			total += len(d)
		}
		if total > len(in) {
			t.Fatalf("documents hold %d bytes, input only %d", total, len(in))
		}
	})
}
