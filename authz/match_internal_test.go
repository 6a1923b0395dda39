package authz

import (
	"regexp"
	"strings"
	"testing"
)

// saPeers exercise the parts of spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?.
var saPeers = []string{
	"cluster.local/ns/test/sa/sleep",
	"td2/ns/test/sa/sleep",
	"a/b/ns/test/sa/sleep",
	"/ns/test/sa/sleep",
	"ns/test/sa/sleep",
	"cluster.local/ns/test/sa/sleep/extra",
	"cluster.local/ns/test/sa/sleep/",
	"cluster.local/ns/test/sa/sleep-v2",
	"cluster.local/ns/test/x/sa/sleep",
	"cluster.local/ns/test/x/y/sa/sleep/z",
	"cluster.local/ns/test//sa/sleep",
	"cluster.local/ns/test/xsa/sleep",
	"cluster.local/ns/test-2/sa/sleep",
	"cluster.local/ns/other/sa/sleep",
	"cluster.local/ns/test/sa/",
	"cluster.local/ns/test/sa",
	"cluster.local/ns/x/ns/test/sa/sleep",
	"cluster.local/ns/test/sa/x/sa/sleep",
	"c\nl/ns/test/sa/sleep",
	"cl/ns/test/a\nb/sa/sleep",
	"cl/ns/test/sa/sleep/a\nb",
	"\n/ns/test/sa/sleep",
	"cluster.local/ns/test/sa/sleepy",
	"cluster.local/ns/test/sa/sleep/ns/test/sa/sleep",
	"x/ns/a.b/sa/c.d",
	"x/ns/aXb/sa/cYd",
	"",
}

func TestServiceAccountMatcherIsIstiosRegex(t *testing.T) {
	for _, v := range [][2]string{{"test", "sleep"}, {"test", "s"}, {"a.b", "c.d"}, {"test", "sleep/extra"}, {"ns", "sa"}} {
		re := regexp.MustCompile(serviceAccountRegex(v[0], v[1]))
		p := saPat{ns: v[0], sa: v[1]}
		if strings.ContainsAny(v[0]+v[1], regexMeta) {
			p.re = re
		}
		for _, peer := range saPeers {
			if got, want := p.matchL7(peer), re.MatchString("spiffe://"+peer); got != want {
				t.Errorf("%s/%s against %q: got %v, Istio's regex %v", v[0], v[1], peer, got, want)
			}
		}
	}
}

func FuzzServiceAccountMatcher(f *testing.F) {
	for _, p := range saPeers {
		f.Add(p, "test", "sleep")
	}
	f.Fuzz(func(t *testing.T, peer, ns, sa string) {
		if ns == "" || sa == "" || strings.ContainsAny(ns+sa, regexMeta) {
			return
		}
		re, err := regexp.Compile(serviceAccountRegex(ns, sa))
		if err != nil {
			return
		}
		p := saPat{ns: ns, sa: sa}
		if got, want := p.matchL7(peer), re.MatchString("spiffe://"+peer); got != want {
			t.Fatalf("%s/%s against %q: got %v, Istio's regex %v", ns, sa, peer, got, want)
		}
	})
}

func TestRequestPrincipalPatterns(t *testing.T) {
	tests := []struct {
		value    string
		iss, sub string
		want     bool
	}{
		{"*", "iss", "sub", true},
		{"*", "", "sub", false},
		{"*", "iss", "", false},
		{"iss/sub", "iss", "sub", true},
		{"https://a.example/x/sub", "https://a.example/x", "sub", true},
		{"https://a.example/x/sub", "https://a.example", "x/sub", false}, // split at the last '/'
		{"iss/*", "iss", "anyone", true},
		{"iss/*", "iss", "", false},
		{"iss/*", "iss2", "anyone", false},
		{"*/sub", "iss", "sub", true},
		{"*/sub", "", "sub", false}, // the issuer must be non-empty
		{"*/sub", "iss", "sub2", false},
		{"*.example.com/sub", "https://a.example.com", "sub", true},
		{"*.example.com/sub", "https://a.example.org", "sub", false},
		{"*.example.com/sub", "https://a.example.com", "subx", false},
		{"iss/ab*", "iss", "abc", true},
		{"iss/ab*", "iss/x", "abc", false}, // the issuer stays exact
		{"https://a/b*", "https://a", "bcd", true},
		{"https://a/b*", "https://a/bc", "d", false},
		{"*sub", "iss", "mysub", true}, // no '/': any issuer, subject suffix
		{"*sub", "", "mysub", false},
		{"iss*", "issuer", "x", true}, // no '/': issuer prefix, any subject
		{"iss*", "issuer", "", false},
		{"iss", "iss", "", true}, // no '/': exact issuer, empty subject
		{"iss", "iss", "x", false},
		{"*/*", "iss", "*", true}, // a leading '*' keeps the subject exact, even "*"
		{"*/*", "iss", "sub", false},
	}
	for _, tc := range tests {
		p := reqPats([]string{tc.value})[0]
		if got := p.iss.match(tc.iss) && p.sub.match(tc.sub); got != tc.want {
			t.Errorf("%q against iss %q sub %q: got %v, want %v", tc.value, tc.iss, tc.sub, got, tc.want)
		}
	}
}
