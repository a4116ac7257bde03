package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"

	"github.com/teredo-go/teredo/internal/metrics"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/server"
)

// Stats counts what the gateway itself does between its server, relay and
// translator.
type Stats struct {
	// ToServer counts datagrams the relay handed to the server.
	ToServer uint64 `json:"to_server"`
	// LocalBubbles counts the relay's indirect bubbles to the gateway's
	// own clients, relayed in process; LocalBubbleDrops those refused.
	LocalBubbles     uint64 `json:"local_bubbles"`
	LocalBubbleDrops uint64 `json:"local_bubble_drops"`
	// TranslatedOut and TranslatedIn count packets whose prefix was
	// translated.
	TranslatedOut uint64 `json:"translated_out"`
	TranslatedIn  uint64 `json:"translated_in"`
	// ForeignSource counts packets from Teredo clients of other servers,
	// dropped: they have no public address.
	ForeignSource uint64 `json:"foreign_source"`
	// PassedIn counts packets from the IPv6 side outside the public
	// prefix, handed to the relay unchanged.
	PassedIn uint64 `json:"passed_in"`
	// Malformed counts packets the translator refused as malformed.
	Malformed uint64 `json:"malformed"`
}

// Status describes a running gateway, as GET /status returns it.
type Status struct {
	Addr          netip.AddrPort `json:"addr"`
	TeredoPrefix  netip.Prefix   `json:"teredo_prefix"`
	PublicPrefix  netip.Prefix   `json:"public_prefix"`
	SecondaryPort uint16         `json:"secondary_port,omitempty"`
	Stats         Stats          `json:"stats"`
	Server        server.Status  `json:"server"`
	Relay         relay.Status   `json:"relay"`
}

// Stats returns a snapshot of the gateway's own counters.
func (g *Gateway) Stats() Stats {
	c := &g.ctr
	return Stats{
		ToServer:         c.toServer.Load(),
		LocalBubbles:     c.localBubbles.Load(),
		LocalBubbleDrops: c.localDrops.Load(),
		TranslatedOut:    c.translatedOut.Load(),
		TranslatedIn:     c.translatedIn.Load(),
		ForeignSource:    c.foreignSource.Load(),
		PassedIn:         c.passedIn.Load(),
		Malformed:        c.malformed.Load(),
	}
}

// Status returns the gateway's addresses and the counters of its parts.
func (g *Gateway) Status() Status {
	s := Status{
		Addr:         g.addr,
		TeredoPrefix: g.nat.Inside(),
		PublicPrefix: g.nat.Outside(),
		Stats:        g.Stats(),
		Server:       g.srv.Status(),
		Relay:        g.relay.Status(),
	}
	if g.sec != nil {
		s.SecondaryPort = g.sec.LocalAddr().Port()
	}
	return s
}

// WritePrometheus writes the gateway's, server's and relay's metrics to w
// in the Prometheus text exposition format, the text GET /metrics serves.
func (g *Gateway) WritePrometheus(out io.Writer) error {
	w := metrics.NewWriter(out)
	g.writeMetrics(w)
	return w.Err()
}

func (g *Gateway) writeMetrics(w *metrics.Writer) {
	st := g.Stats()
	w.Header("teredo_gateway_events_total", "What the gateway did between its server, relay and prefix translator, by event.", metrics.Counter)
	for _, e := range []struct {
		name string
		v    uint64
	}{
		{"to_server", st.ToServer},
		{"local_bubbles", st.LocalBubbles},
		{"local_bubble_drops", st.LocalBubbleDrops},
		{"translated_out", st.TranslatedOut},
		{"translated_in", st.TranslatedIn},
		{"foreign_source", st.ForeignSource},
		{"passed_in", st.PassedIn},
		{"malformed", st.Malformed},
	} {
		w.Sample("teredo_gateway_events_total", float64(e.v), "event", e.name)
	}
	w.Include(func(out io.Writer) error { return server.WritePrometheus(out, g.srv.Stats()) })
	w.Include(g.relay.WritePrometheus)
}

// Handler serves the status as JSON at /status and the metrics at
// /metrics. It has no authentication: keep it on loopback.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(g.Status())
	})
	mux.Handle("/metrics", metrics.Handler(g.writeMetrics))
	return mux
}
