package apitest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const modulePath = "github.com/teredo-go/teredo"

// moduleRoot returns the directory holding go.mod, two levels up from here.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

// publicPackages returns the import-path-relative directories of the
// module's packages that an outside module may import: not under internal/,
// not commands, not test data.
func publicPackages(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		name := d.Name()
		if rel != "." && (name == "internal" || name == "cmd" || name == "testdata" ||
			strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
			return filepath.SkipDir
		}
		matches, _ := filepath.Glob(filepath.Join(path, "*.go"))
		for _, m := range matches {
			if !strings.HasSuffix(m, "_test.go") {
				dirs = append(dirs, rel)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return dirs
}

// internalUse is one exported declaration that names an internal package.
type internalUse struct {
	pos  token.Position
	decl string
	pkg  string
}

// TestNoInternalTypesInPublicAPI fails when an exported declaration of a
// public package (function, method of an exported type, exported field,
// variable, constant or type) names a type from an internal package: an
// outside module could not call or implement it ("use of internal package
// not allowed").
func TestNoInternalTypesInPublicAPI(t *testing.T) {
	root := moduleRoot(t)
	var found []internalUse
	for _, dir := range publicPackages(t, root) {
		found = append(found, scanPackage(t, root, dir)...)
	}
	for _, u := range found {
		t.Errorf("%s: exported %s uses internal package %s", u.pos, u.decl, u.pkg)
	}
}

func scanPackage(t *testing.T, root, dir string) []internalUse {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, filepath.Join(root, dir), func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var out []internalUse
	for _, pkg := range pkgs {
		for name, f := range pkg.Files {
			rel, _ := filepath.Rel(root, name)
			internal := map[string]string{} // local name -> import path
			for _, imp := range f.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				if !isInternal(p) {
					continue
				}
				local := p[strings.LastIndex(p, "/")+1:]
				if imp.Name != nil {
					local = imp.Name.Name
				}
				internal[local] = p
			}
			if len(internal) == 0 {
				continue
			}
			check := func(n ast.Node, decl string) {
				ast.Inspect(n, func(n ast.Node) bool {
					sel, ok := n.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					if id, ok := sel.X.(*ast.Ident); ok {
						if p, ok := internal[id.Name]; ok {
							pos := fset.Position(sel.Pos())
							pos.Filename = rel
							out = append(out, internalUse{pos, decl, p})
						}
					}
					return true
				})
			}
			scanFile(f, check)
		}
	}
	return out
}

func isInternal(path string) bool {
	return strings.HasPrefix(path, modulePath+"/") &&
		(strings.Contains(path, "/internal/") || strings.HasSuffix(path, "/internal"))
}

// scanFile calls check on every part of an exported declaration a user of
// the package sees: signatures, exported fields and methods, the types of
// exported variables and constants, and type definitions.
func scanFile(f *ast.File, check func(ast.Node, string)) {
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if !d.Name.IsExported() {
				continue
			}
			name := d.Name.Name
			if d.Recv != nil {
				recv := receiverName(d.Recv.List[0].Type)
				if !ast.IsExported(recv) {
					continue
				}
				name = recv + "." + name
			}
			check(d.Type, "func "+name)
		case *ast.GenDecl:
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					if s.Name.IsExported() {
						if s.TypeParams != nil {
							check(s.TypeParams, "type "+s.Name.Name)
						}
						checkType(s.Type, "type "+s.Name.Name, check)
					}
				case *ast.ValueSpec:
					for i, n := range s.Names {
						if !n.IsExported() {
							continue
						}
						if s.Type != nil {
							check(s.Type, "var "+n.Name)
						}
						// An untyped value's type comes from its expression,
						// e.g. var X = metrics.New().
						if i < len(s.Values) {
							check(s.Values[i], "var "+n.Name)
						}
					}
				}
			}
		}
	}
}

// checkType checks the exported parts of a type definition: for a struct, its
// exported and embedded fields; for an interface, its methods; otherwise all.
func checkType(e ast.Expr, decl string, check func(ast.Node, string)) {
	switch e := e.(type) {
	case *ast.StructType:
		for _, fld := range e.Fields.List {
			if len(fld.Names) == 0 {
				check(fld.Type, decl+" (embedded)")
				continue
			}
			for _, n := range fld.Names {
				if n.IsExported() {
					check(fld.Type, decl+"."+n.Name)
				}
			}
		}
	default:
		check(e, decl)
	}
}

func receiverName(e ast.Expr) string {
	for {
		switch x := e.(type) {
		case *ast.StarExpr:
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.IndexListExpr:
			e = x.X
		case *ast.Ident:
			return x.Name
		default:
			return ""
		}
	}
}

// TestScanFileFindsInternalUses checks the scanner itself on a synthetic
// file, so that the API test cannot pass by finding nothing.
func TestScanFileFindsInternalUses(t *testing.T) {
	const src = `package p

import (
	"io"
	m "github.com/teredo-go/teredo/internal/metrics"
)

type Config struct {
	Writer *m.Writer   // exported field: found
	m.Type             // embedded: found
	w      *m.Writer   // unexported: ignored
}

type hidden struct{}

func (hidden) Write(w *m.Writer) {} // method of an unexported type: ignored

func Write(w *m.Writer)            {} // found
func write(w *m.Writer)            {} // ignored
func Fine(w io.Writer) error       { return nil }
func (c *Config) Into() m.Type     { return "" } // found

var Default = m.NewWriter(nil) // found
type Alias = m.Writer          // found
type Iface interface{ W() *m.Writer } // found
type Generic[T m.Type] struct{}       // found
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	scanFile(f, func(n ast.Node, decl string) {
		ast.Inspect(n, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "m" {
					got = append(got, decl)
				}
			}
			return true
		})
	})
	want := []string{
		"type Config.Writer", "type Config (embedded)", "func Write",
		"func Config.Into", "var Default", "type Alias", "type Iface", "type Generic",
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("found\n%q\nwant\n%q", got, want)
	}
}
