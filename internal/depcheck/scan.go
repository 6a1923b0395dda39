package depcheck

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Module is the library's module path.
const Module = "github.com/meshblocks/meshblocks"

// File is one parsed non-test Go file of the library module.
type File struct {
	Path string // relative to the module root
	Pkg  string // import path of its package
	AST  *ast.File
	Fset *token.FileSet
}

// Root finds the library module's root directory from the working
// directory of a test (which go test sets to the package directory).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module "+Module+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("depcheck: module %s not found above the working directory", Module)
		}
		dir = parent
	}
}

// Files parses every non-test .go file of the library module, skipping the
// nested modules (examples, interop) and testdata directories.
func Files(root string) ([]File, error) {
	var out []File
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			if rel != "." {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		pkg := Module
		if dir := filepath.ToSlash(filepath.Dir(rel)); dir != "." {
			pkg += "/" + dir
		}
		out = append(out, File{Path: filepath.ToSlash(rel), Pkg: pkg, AST: f, Fset: fset})
		return nil
	})
	return out, err
}

// Imports returns, per package, the sorted set of packages it imports from
// non-test files.
func Imports(files []File) map[string][]string {
	set := make(map[string]map[string]bool)
	for _, f := range files {
		if set[f.Pkg] == nil {
			set[f.Pkg] = make(map[string]bool)
		}
		for _, imp := range f.AST.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			set[f.Pkg][p] = true
		}
	}
	out := make(map[string][]string, len(set))
	for pkg, imps := range set {
		out[pkg] = []string{}
		for p := range imps {
			out[pkg] = append(out[pkg], p)
		}
		sort.Strings(out[pkg])
	}
	return out
}

// IsStd reports whether an import path belongs to the standard library
// (its first element has no dot).
func IsStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}
