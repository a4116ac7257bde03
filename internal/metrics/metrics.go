// Package metrics writes counters and gauges in the Prometheus text
// exposition format, so that the server and relay can serve /metrics without
// a client library.
package metrics

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// ContentType is the media type of the text exposition format (version 0.0.4).
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Type is a metric type as written on the TYPE line.
type Type string

// The metric types this package writes.
const (
	Counter Type = "counter"
	Gauge   Type = "gauge"
)

// ErrName reports a metric or label name outside [a-zA-Z_:][a-zA-Z0-9_:]*.
var ErrName = errors.New("metrics: invalid name")

// Writer writes metric families in the text format. It remembers the first
// error (of the underlying writer or of an invalid name) and writes nothing
// after it; check Err when done.
//
// A family is a Header followed by its Samples:
//
//	w.Header("teredo_drops_total", "Packets dropped, by reason.", metrics.Counter)
//	w.Sample("teredo_drops_total", 3, "reason", "malformed")
//	w.Sample("teredo_drops_total", 1, "reason", "loop")
type Writer struct {
	w   io.Writer
	err error
	buf []byte
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Include appends what another package's exporter writes, such as a
// role's WritePrometheus, unless an error was met already.
func (w *Writer) Include(write func(io.Writer) error) {
	if w.err != nil {
		return
	}
	if err := write(w.w); err != nil {
		w.err = err
	}
}

// Err returns the first error met, if any.
func (w *Writer) Err() error { return w.err }

// Header writes the HELP and TYPE lines of a family.
func (w *Writer) Header(name, help string, typ Type) {
	if w.err != nil {
		return
	}
	if !validName(name, true) {
		w.err = fmt.Errorf("%w: %q", ErrName, name)
		return
	}
	b := w.buf[:0]
	b = append(b, "# HELP "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = appendEscaped(b, help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, typ...)
	b = append(b, '\n')
	w.flush(b)
}

// Sample writes one sample of a family. labels are name, value pairs; an odd
// trailing name is an error.
func (w *Writer) Sample(name string, v float64, labels ...string) {
	if w.err != nil {
		return
	}
	if !validName(name, true) {
		w.err = fmt.Errorf("%w: %q", ErrName, name)
		return
	}
	if len(labels)%2 != 0 {
		w.err = fmt.Errorf("%w: label %q without a value", ErrName, labels[len(labels)-1])
		return
	}
	b := append(w.buf[:0], name...)
	for i := 0; i < len(labels); i += 2 {
		if !validName(labels[i], false) {
			w.err = fmt.Errorf("%w: label %q", ErrName, labels[i])
			return
		}
		if i == 0 {
			b = append(b, '{')
		} else {
			b = append(b, ',')
		}
		b = append(b, labels[i]...)
		b = append(b, '=', '"')
		b = appendEscaped(b, labels[i+1], true)
		b = append(b, '"')
	}
	if len(labels) > 0 {
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendValue(b, v)
	b = append(b, '\n')
	w.flush(b)
}

// Counter writes a family with a single unlabelled counter sample.
func (w *Writer) Counter(name, help string, v uint64) {
	w.Header(name, help, Counter)
	w.Sample(name, float64(v))
}

// Gauge writes a family with a single unlabelled gauge sample.
func (w *Writer) Gauge(name, help string, v float64) {
	w.Header(name, help, Gauge)
	w.Sample(name, v)
}

func (w *Writer) flush(b []byte) {
	w.buf = b
	if _, err := w.w.Write(b); err != nil {
		w.err = err
	}
}

// Handler returns an http.Handler that answers GET and HEAD with the
// metrics write produces.
func Handler(write func(*Writer)) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			rw.Header().Set("Allow", "GET, HEAD")
			http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var sb strings.Builder
		mw := NewWriter(&sb)
		write(mw)
		if err := mw.Err(); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		rw.Header().Set("Content-Type", ContentType)
		io.WriteString(rw, sb.String())
	})
}

func validName(s string, colon bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case c == ':' && colon:
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// appendEscaped escapes backslash and newline (HELP text), and also the
// double quote in label values.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, '\\', '\\')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '"' && quote:
			b = append(b, '\\', '"')
		default:
			b = append(b, c)
		}
	}
	return b
}

func appendValue(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.AppendInt(b, int64(v), 10)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
