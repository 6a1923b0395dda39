package route

import (
	"strconv"
	"strings"
	"testing"
)

// refUnescape is the straightforward (allocating) decoder the
// allocation-free helpers must agree with.
func refUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s):
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
			} else {
				b.WriteByte(c)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func TestEscapedCompare(t *testing.T) {
	tests := []struct {
		raw, want string
		equal     bool
		prefix    bool
	}{
		{"a+b%2Fc", "a b/c", true, true},
		{"a+b%2Fc", "a b", false, true},
		{"%zz", "%zz", true, true},
		{"%4", "%4", true, true},
		{"%41%42", "AB", true, true},
		{"%41%42", "ABC", false, false},
		{"j%C3%A4son", "jä", false, true},
		{"", "", true, true},
		{"x", "", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.raw+"|"+tc.want, func(t *testing.T) {
			if got := escapedEqual(tc.raw, tc.want); got != tc.equal {
				t.Errorf("escapedEqual = %v, want %v", got, tc.equal)
			}
			if got := escapedHasPrefix(tc.raw, tc.want); got != tc.prefix {
				t.Errorf("escapedHasPrefix = %v, want %v", got, tc.prefix)
			}
		})
	}
}

func FuzzEscapedAndJoined(f *testing.F) {
	f.Add("a+b%2Fc", "a b", "x,y", "x")
	f.Add("%zz%4", "%z", "", ",")
	f.Fuzz(func(t *testing.T, raw, want, joined, prefix string) {
		dec := refUnescape(raw)
		if got := escapedEqual(raw, want); got != (dec == want) {
			t.Fatalf("escapedEqual(%q, %q) = %v, decoded %q", raw, want, got, dec)
		}
		if got := escapedHasPrefix(raw, want); got != strings.HasPrefix(dec, want) {
			t.Fatalf("escapedHasPrefix(%q, %q) = %v, decoded %q", raw, want, got, dec)
		}
		if got := string(appendUnescaped(nil, raw)); got != dec {
			t.Fatalf("appendUnescaped(%q) = %q, want %q", raw, got, dec)
		}
		vals := strings.Split(joined, ",")
		if len(vals) < 2 {
			return
		}
		if got := joinedHasPrefix(vals, prefix); got != strings.HasPrefix(joined, prefix) {
			t.Fatalf("joinedHasPrefix(%q, %q) = %v", vals, prefix, got)
		}
		if got := joinedEqual(vals, prefix); got != (joined == prefix) {
			t.Fatalf("joinedEqual(%q, %q) = %v", vals, prefix, got)
		}
	})
}
