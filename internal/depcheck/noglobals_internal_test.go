package depcheck

import (
	"go/parser"
	"go/token"
	"testing"
)

func TestViolationsDetects(t *testing.T) {
	src := `package bad
import (
	"log/slog"
	"os"
	"flag"
)
var logger = slog.New(nil)
var l2 *slog.Logger
func init() {}
func f() string { slog.Info("x"); return os.Getenv("HOME") }
var _ = flag.Bool
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "bad.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := Violations(File{Path: "bad/bad.go", Pkg: Module + "/bad", AST: f, Fset: fset})
	// flag import, logger ctor, logger type, init, slog.Info, os.Getenv
	if len(got) != 6 {
		t.Fatalf("got %d violations, want 6:\n%v", len(got), got)
	}
	clean := `package good
import "log/slog"
type Config struct{ Logger *slog.Logger }
func (c Config) log() *slog.Logger { return slog.New(slog.DiscardHandler) }
`
	f, err = parser.ParseFile(fset, "good.go", clean, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v := Violations(File{Path: "good/good.go", AST: f, Fset: fset}); len(v) != 0 {
		t.Fatalf("clean file reported: %v", v)
	}
}
