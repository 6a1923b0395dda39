package authztest_test

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/meshblocks/meshblocks/authz/authztest"
)

// jsonFields returns the JSON names of t's fields, recursively, with the
// path at which each occurs.
func jsonFields(t reflect.Type, path string, out map[string]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[path+name] = name
		jsonFields(f.Type, path+name+".", out)
	}
}

// TestDocDocumentsEveryField keeps the package documentation, which is the
// reference of the test file format, complete.
func TestDocDocumentsEveryField(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	jsonFields(reflect.TypeFor[authztest.Suite](), "", fields)
	if len(fields) < 30 {
		t.Fatalf("found only %d fields: %v", len(fields), fields)
	}
	for path, name := range fields {
		if !regexp.MustCompile(`[\s{,]` + regexp.QuoteMeta(name) + `:`).Match(doc) {
			t.Errorf("doc.go does not document %s (%q)", path, name+":")
		}
	}
	for _, s := range []string{"x-", "unique across all files", "expectError"} {
		if !strings.Contains(string(doc), s) {
			t.Errorf("doc.go does not mention %q", s)
		}
	}
}
