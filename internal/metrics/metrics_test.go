package metrics

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWriter(t *testing.T) {
	var sb strings.Builder
	w := NewWriter(&sb)
	w.Counter("teredo_received_total", "Datagrams received.", 42)
	w.Gauge("teredo_sources", "Sources in the\nrate-limit table \\ now.", 1.5)
	w.Header("teredo_drops_total", "Drops by reason.", Counter)
	w.Sample("teredo_drops_total", 3, "reason", "mal\"formed\n", "socket", `a\b`)
	w.Sample("teredo_drops_total", math.Inf(1))
	w.Sample("teredo_drops_total", math.NaN())
	w.Sample("teredo_drops_total", 1e20)
	w.Sample("teredo_drops_total", -2)
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
	want := `# HELP teredo_received_total Datagrams received.
# TYPE teredo_received_total counter
teredo_received_total 42
# HELP teredo_sources Sources in the\nrate-limit table \\ now.
# TYPE teredo_sources gauge
teredo_sources 1.5
# HELP teredo_drops_total Drops by reason.
# TYPE teredo_drops_total counter
teredo_drops_total{reason="mal\"formed\n",socket="a\\b"} 3
teredo_drops_total +Inf
teredo_drops_total NaN
teredo_drops_total 1e+20
teredo_drops_total -2
`
	if got := sb.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestWriterErrors(t *testing.T) {
	tests := []struct {
		name string
		f    func(w *Writer)
	}{
		{"empty name", func(w *Writer) { w.Counter("", "x", 1) }},
		{"leading digit", func(w *Writer) { w.Counter("1abc", "x", 1) }},
		{"dash", func(w *Writer) { w.Sample("a-b", 1) }},
		{"colon in label", func(w *Writer) { w.Sample("a", 1, "x:y", "v") }},
		{"odd labels", func(w *Writer) { w.Sample("a", 1, "x") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sb strings.Builder
			w := NewWriter(&sb)
			tt.f(w)
			if !errors.Is(w.Err(), ErrName) {
				t.Fatalf("Err = %v, want ErrName", w.Err())
			}
			w.Counter("ok", "after the error", 1)
			if sb.Len() != 0 {
				t.Errorf("wrote %q after an error", sb.String())
			}
		})
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(b []byte) (int, error) {
	f.n++
	return 0, io.ErrClosedPipe
}

func TestWriterStopsAfterWriteError(t *testing.T) {
	f := &failWriter{}
	w := NewWriter(f)
	w.Counter("a", "a", 1)
	w.Counter("b", "b", 1)
	if !errors.Is(w.Err(), io.ErrClosedPipe) || f.n != 1 {
		t.Fatalf("Err = %v after %d writes", w.Err(), f.n)
	}
}

func TestHandler(t *testing.T) {
	h := Handler(func(w *Writer) { w.Counter("x_total", "X.", 7) })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != ContentType ||
		!strings.Contains(rec.Body.String(), "x_total 7\n") {
		t.Fatalf("GET: %d %q %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/metrics", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", rec.Code)
	}
	bad := Handler(func(w *Writer) { w.Counter("bad name", "", 1) })
	rec = httptest.NewRecorder()
	bad.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("invalid name: %d", rec.Code)
	}
}

func ExampleWriter() {
	var sb strings.Builder
	w := NewWriter(&sb)
	w.Counter("teredo_server_received_total", "Datagrams received.", 10)
	w.Header("teredo_server_drops_total", "Datagrams dropped, by reason.", Counter)
	w.Sample("teredo_server_drops_total", 2, "reason", "malformed")
	w.Sample("teredo_server_drops_total", 1, "reason", "loop")
	if err := w.Err(); err != nil {
		panic(err)
	}
	fmt.Print(sb.String())
	// Output:
	// # HELP teredo_server_received_total Datagrams received.
	// # TYPE teredo_server_received_total counter
	// teredo_server_received_total 10
	// # HELP teredo_server_drops_total Datagrams dropped, by reason.
	// # TYPE teredo_server_drops_total counter
	// teredo_server_drops_total{reason="malformed"} 2
	// teredo_server_drops_total{reason="loop"} 1
}
