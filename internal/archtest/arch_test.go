package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// corePackages are pure: no I/O, no clock, no goroutines. The simulator
// runs them under a fake clock, which only works if they never reach out.
var corePackages = []string{"ha", "wire", "repl", "sim"}

// forbiddenImports are the ways out of a pure package.
var forbiddenImports = []string{
	"net", "os", "os/exec", "syscall", "io/fs", "log", "log/slog",
	"golang.org/x/sys/unix", "github.com/vishvananda/netlink", "github.com/vishvananda/netns",
	"github.com/ti-mo/conntrack", "github.com/google/nftables", "github.com/mdlayher/arp",
	"github.com/mdlayher/ndp", "go.etcd.io/bbolt", "math/rand", "crypto/rand",
}

// forbiddenCalls read the wall clock, sleep or start timers.
var forbiddenCalls = map[string][]string{
	"time": {"Now", "Since", "Until", "Sleep", "After", "AfterFunc", "NewTimer", "NewTicker", "Tick"},
}

func internalDir(t *testing.T) string {
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func parseDir(t *testing.T, dir string, tests bool) map[string]*ast.Package {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool {
		return tests || !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatalf("parse %s: %v", dir, err)
	}
	return pkgs
}

func TestCoreIsPure(t *testing.T) {
	root := internalDir(t)
	for _, name := range corePackages {
		dir := filepath.Join(root, name)
		if _, err := os.Stat(dir); err != nil {
			continue // not written yet
		}
		for _, pkg := range parseDir(t, dir, false) {
			for fname, f := range pkg.Files {
				for _, imp := range f.Imports {
					path, _ := strconv.Unquote(imp.Path.Value)
					for _, bad := range forbiddenImports {
						if path == bad {
							t.Errorf("%s imports %q: the pure core must not do I/O or use global randomness; take it through an interface or an argument", rel(root, fname), path)
						}
					}
				}
				ast.Inspect(f, func(n ast.Node) bool {
					switch n := n.(type) {
					case *ast.GoStmt:
						t.Errorf("%s: starts a goroutine; the pure core is driven by one event loop", rel(root, fname))
					case *ast.SelectorExpr:
						if id, ok := n.X.(*ast.Ident); ok {
							for _, fn := range forbiddenCalls[id.Name] {
								if n.Sel.Name == fn {
									t.Errorf("%s: uses time.%s; the pure core takes time as an argument", rel(root, fname), fn)
								}
							}
						}
					}
					return true
				})
			}
		}
	}
}

// TestSimIsTestOnly: the simulator must never be imported by code that runs
// in the daemon.
func TestSimIsTestOnly(t *testing.T) {
	root := internalDir(t)
	walkPackages(t, root, func(dir string) {
		for _, pkg := range parseDir(t, dir, false) {
			for fname, f := range pkg.Files {
				for _, imp := range f.Imports {
					if strings.HasSuffix(strings.Trim(imp.Path.Value, `"`), "/internal/sim") {
						t.Errorf("%s imports internal/sim outside a test", rel(root, fname))
					}
				}
			}
		}
	})
}

// TestEveryPackageHasADoc: each package says what it is for and what it
// must never do, so the next engineer knows where a change belongs.
func TestEveryPackageHasADoc(t *testing.T) {
	root := filepath.Dir(internalDir(t))
	walkPackages(t, root, func(dir string) {
		for name, pkg := range parseDir(t, dir, true) {
			if strings.HasSuffix(name, "_test") {
				continue
			}
			var doc string
			for _, f := range pkg.Files {
				if f.Doc != nil {
					doc += f.Doc.Text()
				}
			}
			switch {
			case strings.TrimSpace(doc) == "":
				t.Errorf("package %s (%s) has no package doc", name, rel(root, dir))
			case name != "main" && !strings.Contains(strings.ToLower(doc), "never"):
				t.Errorf("package %s (%s): its doc must say what it must never do", name, rel(root, dir))
			}
		}
	})
}

func walkPackages(t *testing.T, root string, fn func(dir string)) {
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if b := d.Name(); path != root && (strings.HasPrefix(b, ".") || b == "testdata" || b == "bin") {
				return filepath.SkipDir
			}
			if m, _ := filepath.Glob(filepath.Join(path, "*.go")); len(m) > 0 {
				fn(path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func rel(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil {
		return r
	}
	return p
}
