package stack_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestREADMEEmbedding checks that the Go code of the README's "Embedding the
// library" section is, character for character, serveAndFetch in
// example_embed_test.go, which Example_embedding compiles and runs against
// teredotest: the README's code builds and works as written.
func TestREADMEEmbedding(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	block, ok := goBlockAfter(string(readme), "## Embedding the library")
	if !ok {
		t.Fatal(`README.md has no Go code block under "## Embedding the library"`)
	}
	src, err := os.ReadFile("example_embed_test.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "\n"+block) || !strings.HasPrefix(block, "func serveAndFetch(") {
		t.Errorf("README's embedding code differs from serveAndFetch in example_embed_test.go; README has:\n%s", block)
	}
}

// goBlockAfter returns the first ```go block after the line heading.
func goBlockAfter(md, heading string) (string, bool) {
	i := strings.Index(md, "\n"+heading+"\n")
	if i < 0 {
		return "", false
	}
	md = md[i:]
	start := strings.Index(md, "\n```go\n")
	if start < 0 {
		return "", false
	}
	md = md[start+len("\n```go\n"):]
	end := strings.Index(md, "\n```\n")
	if end < 0 {
		return "", false
	}
	return md[:end+1], true
}
