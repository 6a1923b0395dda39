package depcheck

import (
	"go/ast"
	"go/token"
	"strconv"
	"strings"
	"testing"
)

// forbiddenCalls are package.function pairs a library package must not
// call: configuration comes from Config structs, never the environment.
var forbiddenCalls = map[string]bool{
	"os.Getenv":    true,
	"os.LookupEnv": true,
	"os.Environ":   true,
	"os.Setenv":    true,
	"log.Printf":   true, // the standard logger is process-global
	"log.Println":  true,
	"log.Print":    true,
	"log.Fatal":    true,
	"log.Fatalf":   true,
	"slog.Info":    true, // so is slog's default logger
	"slog.Debug":   true,
	"slog.Warn":    true,
	"slog.Error":   true,
	"slog.Default": true,
}

// forbiddenImports may only appear in examples/.
var forbiddenImports = map[string]string{
	"flag": "flags belong in examples/",
	"github.com/prometheus/client_golang/prometheus":          "metrics go through hook funcs; Prometheus lives in examples/",
	"github.com/prometheus/client_golang/prometheus/promauto": "metrics go through hook funcs; Prometheus lives in examples/",
	"k8s.io/client-go/kubernetes":                             "client-go lives in examples/",
}

func TestNoGlobals(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	files, err := Files(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasPrefix(f.Path, "internal/depcheck/") {
			continue
		}
		helper := strings.HasSuffix(f.Pkg, "test")
		for _, v := range Violations(f) {
			// Public test helpers (identitytest, inpodtest, ...) may read
			// the environment (CI decides whether a root-only test may
			// skip); every other rule holds for them too.
			if helper && isEnvRead(v) {
				continue
			}
			t.Error(v)
		}
	}
}

func isEnvRead(violation string) bool {
	for _, call := range []string{"os.Getenv:", "os.LookupEnv:"} {
		if strings.Contains(violation, call) {
			return true
		}
	}
	return false
}

// Violations lists the house-rule violations in one file.
func Violations(f File) []string {
	var out []string
	pos := func(p token.Pos) string { return f.Path + ":" + strconv.Itoa(f.Fset.Position(p).Line) }
	names := map[string]string{} // local name -> import path
	for _, imp := range f.AST.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		name := p[strings.LastIndex(p, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		names[name] = p
		if why, bad := forbiddenImports[p]; bad {
			out = append(out, pos(imp.Pos())+": imports "+p+": "+why)
		}
	}
	for _, d := range f.AST.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil && d.Name.Name == "init" {
				out = append(out, pos(d.Pos())+": func init(): library packages have no init side effects")
			}
		case *ast.GenDecl:
			if d.Tok != token.VAR {
				continue
			}
			for _, s := range d.Specs {
				vs := s.(*ast.ValueSpec)
				if isLogger(vs.Type, names) {
					out = append(out, pos(vs.Pos())+": package-level logger: use a Logger field")
				}
				for _, v := range vs.Values {
					if call, ok := v.(*ast.CallExpr); ok && isLoggerCtor(call.Fun, names) {
						out = append(out, pos(vs.Pos())+": package-level logger: use a Logger field")
					}
				}
			}
		}
	}
	ast.Inspect(f.AST, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		path := names[id.Name]
		if path == "" {
			return true
		}
		key := path[strings.LastIndex(path, "/")+1:] + "." + sel.Sel.Name
		if (path == "os" || path == "log" || path == "log/slog") && forbiddenCalls[key] {
			out = append(out, pos(sel.Pos())+": "+key+": library packages take configuration and loggers from their callers")
		}
		return true
	})
	return out
}

func isLogger(e ast.Expr, names map[string]string) bool {
	if star, ok := e.(*ast.StarExpr); ok {
		e = star.X
	}
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}
	p := names[id.Name]
	return (p == "log/slog" || p == "log") && sel.Sel.Name == "Logger"
}

func isLoggerCtor(e ast.Expr, names map[string]string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}
	p := names[id.Name]
	return (p == "log/slog" || p == "log") && (sel.Sel.Name == "New" || sel.Sel.Name == "Default")
}
