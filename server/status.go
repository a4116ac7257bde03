package server

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"

	"github.com/teredo-go/teredo/internal/metrics"
)

// Stats is a snapshot of the server's counters.
type Stats struct {
	// Received counts datagrams given to Process.
	Received uint64 `json:"received"`
	// AnsweredRS counts router solicitations answered with an RA.
	AnsweredRS uint64 `json:"answered_rs"`
	// ForwardedTeredo counts bubbles and ICMPv6 messages relayed over UDP.
	ForwardedTeredo uint64 `json:"forwarded_teredo"`
	// ForwardedIPv6 counts echo requests handed to the IPv6 output.
	ForwardedIPv6 uint64 `json:"forwarded_ipv6"`
	// Dropped is the sum of Drops.
	Dropped uint64 `json:"dropped"`
	// Drops counts dropped datagrams by reason.
	Drops DropCounts `json:"drops"`
	// SendErrors counts datagrams that were accepted for sending but that
	// the socket refused when the batch was flushed.
	SendErrors uint64 `json:"send_errors"`
	// RateSources is the number of sources in the rate-limit table.
	RateSources int `json:"rate_limit_sources"`
}

// DropCounts counts drops indexed by reason. It encodes to JSON as an
// object keyed by DropReason.String, without NotDropped, and decodes from
// the same form, so that a Go client of /status can use Status as is.
type DropCounts [NumDropReasons]uint64

// MarshalJSON implements json.Marshaler.
func (d DropCounts) MarshalJSON() ([]byte, error) {
	m := make(map[string]uint64, len(d)-1)
	for r := DropReason(1); r < NumDropReasons; r++ {
		m[r.String()] = d[r]
	}
	return json.Marshal(m)
}

// UnmarshalJSON implements json.Unmarshaler. It accepts an object of
// non-negative integer counts keyed by DropReason.String; reasons absent
// from it count zero. Keys it does not know, including "none", are
// ignored whatever their values rather than refused, so that a client
// keeps reading the status of a newer server that counts more reasons.
// JSON null leaves d as it is, as for the types encoding/json decodes
// itself. On error d is unchanged.
func (d *DropCounts) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("server: decoding drop counts: %w", err)
	}
	if m == nil {
		return nil
	}
	var c DropCounts
	for r := DropReason(1); r < NumDropReasons; r++ {
		if v, ok := m[r.String()]; ok {
			if err := json.Unmarshal(v, &c[r]); err != nil {
				return fmt.Errorf("server: decoding drop count %q: %w", r.String(), err)
			}
		}
	}
	*d = c
	return nil
}

// Status describes a running server, as GET /status returns it.
type Status struct {
	Primary    netip.AddrPort `json:"primary"`
	Secondary  netip.AddrPort `json:"secondary"`
	MTU        uint32         `json:"mtu"`
	IPv6Output bool           `json:"ipv6_output"`
	Stats      Stats          `json:"stats"`
}

// Status returns the processor's addresses, settings and counters.
func (p *Processor) Status() Status {
	return Status{
		Primary:    p.primary,
		Secondary:  p.secondary,
		MTU:        p.mtu,
		IPv6Output: p.out != nil,
		Stats:      p.Stats(),
	}
}

// Handler serves GET /status as JSON (see Status) and GET /metrics in the
// Prometheus text format, as relay.Relay.Handler does.
func (s *Server) Handler() http.Handler { return statusHandler(s.Status) }

// Handler serves GET /status and GET /metrics for the processor, as
// Server.Handler does.
func (p *Processor) Handler() http.Handler { return statusHandler(p.Status) }

// statusHandler serves the status and metrics from status, called per
// request.
func statusHandler(status func() Status) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	})
	mux.Handle("GET /metrics", metrics.Handler(func(w *metrics.Writer) {
		writeMetrics(w, status().Stats)
	}))
	return mux
}

// WritePrometheus writes s to w as Prometheus metrics (text exposition
// format) named teredo_server_*, the same text GET /metrics serves.
func WritePrometheus(w io.Writer, s Stats) error {
	mw := metrics.NewWriter(w)
	writeMetrics(mw, s)
	return mw.Err()
}

func writeMetrics(w *metrics.Writer, s Stats) {
	w.Counter("teredo_server_received_total", "Datagrams received.", s.Received)
	w.Counter("teredo_server_answered_rs_total", "Router solicitations answered with a router advertisement.", s.AnsweredRS)
	w.Counter("teredo_server_forwarded_teredo_total", "Bubbles and ICMPv6 messages relayed to Teredo clients over UDP.", s.ForwardedTeredo)
	w.Counter("teredo_server_forwarded_ipv6_total", "Echo requests sent to native IPv6 hosts.", s.ForwardedIPv6)
	w.Header("teredo_server_dropped_total", "Datagrams dropped, by reason.", metrics.Counter)
	for r := DropReason(1); r < NumDropReasons; r++ {
		w.Sample("teredo_server_dropped_total", float64(s.Drops[r]), "reason", r.String())
	}
	w.Counter("teredo_server_send_errors_total", "Datagrams the sockets refused to send.", s.SendErrors)
	w.Gauge("teredo_server_rate_limit_sources", "Sources in the rate-limit table.", float64(s.RateSources))
}
