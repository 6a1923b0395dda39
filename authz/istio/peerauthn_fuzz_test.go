package istio_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

// FuzzParsePeerAuthentications checks that decoding arbitrary YAML never
// panics, that every returned object either is valid or makes its scope
// STRICT, and that resolution is deterministic.
func FuzzParsePeerAuthentications(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("..", "testdata", "peerauthn", "objects", "*.yaml"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "bookinfo", "reviews", uint16(9080))
	}
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: x}\nspec: {portLevelMtls: {\"99999999999\": {mode: 7}}}\n"), "x", "a", uint16(0))
	f.Add([]byte("kind: List\nitems: [null, 3, {kind: PeerAuthentication, apiVersion: security.istio.io/v1beta1}]\n"), "default", "", uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, ns, app string, port uint16) {
		pas, _ := istio.ParsePeerAuthentications(data, istio.Options{})
		e, _ := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
		w := &authz.Workload{Namespace: ns, Labels: map[string]string{"app": app}}
		d1, d2 := e.Mode(w, port), e.Mode(w, port)
		if d1 != d2 {
			t.Fatalf("non-deterministic: %v vs %v", d1, d2)
		}
		if d1.Mode == authz.MTLSUnset {
			t.Fatalf("UNSET is never an effective mode: %v", d1)
		}
		for i := range pas {
			pa := &pas[i]
			if pa.Err == nil && authz.ValidatePeerAuthentication(pa) == nil {
				continue
			}
			// An invalid object in the workload's namespace whose scope
			// covers it must force STRICT.
			if pa.Namespace == ns && (len(pa.Selector) == 0 || pa.Selector["app"] == app && len(pa.Selector) == 1) && d1.Mode != authz.MTLSStrict {
				t.Fatalf("invalid %s did not fail closed: %v", pa, d1)
			}
		}
	})
}
