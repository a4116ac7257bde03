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
	// Hairpinned counts packets from one client to another's public
	// address (or its own), kept in process; HairpinDrops those dropped
	// for hop limit exhausted or malformed.
	Hairpinned   uint64 `json:"hairpinned"`
	HairpinDrops uint64 `json:"hairpin_drops"`
}

// Status describes a running gateway, as GET /status returns it. The
// first five fields are those of every role's status; Server and Relay
// are its parts' own.
type Status struct {
	State         string  `json:"state"` // the relay's: "running" or "closed"
	Version       string  `json:"version"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Counters holds the gateway's own packet counters by direction
	// (from the Teredo side: rx) and result ("rx_translated_out"), Drops
	// its own drops by reason ("foreign_source").
	Counters map[string]uint64 `json:"counters"`
	Drops    map[string]uint64 `json:"drops"`

	Addr          netip.AddrPort `json:"addr"`
	TeredoPrefix  netip.Prefix   `json:"teredo_prefix"`
	PublicPrefix  netip.Prefix   `json:"public_prefix"`
	SecondaryPort uint16         `json:"secondary_port,omitempty"`
	// Stats holds the gateway's counters typed, for Go callers; /status
	// carries them as Counters and Drops.
	Stats  Stats         `json:"-"`
	Server server.Status `json:"server"`
	Relay  relay.Status  `json:"relay"`
}

// statsKeys places Stats in the metrics model every role shares (see
// internal/metrics), in the order Stats.counter reads them.
var statsKeys = []metrics.Key{
	{Kind: metrics.Packets, Direction: metrics.RX, Name: "to_server"},
	{Kind: metrics.Packets, Direction: metrics.TX, Name: "local_bubbles"},
	{Kind: metrics.Packets, Direction: metrics.RX, Name: "translated_out"},
	{Kind: metrics.Packets, Direction: metrics.TX, Name: "translated_in"},
	{Kind: metrics.Packets, Direction: metrics.TX, Name: "passed_in"},
	{Kind: metrics.Packets, Direction: metrics.TX, Name: "hairpinned"},
	{Kind: metrics.Dropped, Name: "local_bubble"},
	{Kind: metrics.Dropped, Name: "foreign_source"},
	{Kind: metrics.Dropped, Name: "malformed"},
	{Kind: metrics.Dropped, Name: "hairpin"},
}

// counter returns the counter statsKeys[i] describes.
func (s *Stats) counter(i int) uint64 {
	return [...]uint64{s.ToServer, s.LocalBubbles, s.TranslatedOut, s.TranslatedIn, s.PassedIn, s.Hairpinned,
		s.LocalBubbleDrops, s.ForeignSource, s.Malformed, s.HairpinDrops}[i]
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
		Hairpinned:       c.hairpinned.Load(),
		HairpinDrops:     c.hairpinDrops.Load(),
	}
}

// Status returns the gateway's addresses and the counters of its parts.
func (g *Gateway) Status() Status {
	st := g.Stats()
	rs := g.relay.Status()
	s := Status{
		State:         rs.State,
		Version:       rs.Version,
		UptimeSeconds: rs.UptimeSeconds,
		Addr:          g.addr,
		TeredoPrefix:  g.nat.Inside(),
		PublicPrefix:  g.nat.Outside(),
		Stats:         st,
		Server:        g.srv.Status(),
		Relay:         rs,
	}
	s.Counters, s.Drops = metrics.StatusMaps(statsKeys, st.counter)
	if g.sec != nil {
		s.SecondaryPort = g.sec.LocalAddr().Port()
	}
	return s
}

// WritePrometheus writes the gateway's, server's and relay's metrics to w
// in the Prometheus text exposition format: the text GET /metrics serves
// but teredo_build_info.
func (g *Gateway) WritePrometheus(out io.Writer) error {
	w := metrics.NewWriter(out)
	g.writeMetrics(w)
	return w.Err()
}

func (g *Gateway) writeMetrics(w *metrics.Writer) {
	st := g.Stats()
	w.Role("gateway", statsKeys, st.counter)
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
	mux.Handle("/metrics", metrics.Handler(func(w *metrics.Writer) {
		w.BuildInfo(metrics.Build())
		g.writeMetrics(w)
	}))
	return mux
}
