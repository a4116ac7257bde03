package relay

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/teredo-go/teredo/internal/metrics"
)

// Counter names an event the relay counts: a packet forwarded, a bubble
// sent, or a drop and its reason.
type Counter int

// Counters of the transmit path (IPv6 side to Teredo), the receive path
// (Teredo to IPv6 side) and ICMPv6 errors.
const (
	TxForwarded           Counter = iota // encapsulated to a trusted peer
	TxQueued                             // queued while the peer is bubbled
	TxFlushed                            // queued packets sent once the peer answered
	TxBubblesIndirect                    // bubbles sent through the peer's server
	TxBubblesDirect                      // bubbles sent to the peer's mapping
	TxDropMalformed                      // not a valid IPv6 packet
	TxDropMulticast                      // multicast destination
	TxDropNotTeredo                      // destination outside the Teredo prefix
	TxDropFiltered                       // embedded server or mapping not global unicast
	TxDropQueueFull                      // the peer's queue was full
	TxDropRateLimited                    // too many new peers from one IPv6 source
	TxDropUnreachable                    // queued packets discarded when bubbles went unanswered
	TxErrors                             // UDP send errors
	PeersUnreachable                     // peers given up after the last bubble
	RxForwarded                          // decapsulated to the IPv6 side
	RxBubbles                            // bubbles received and accepted
	RxSymmetricNAT                       // accepted from a mapping that differs from the address (nonce-validated bubble)
	RxNewPeers                           // unknown peers accepted on a matching mapping
	RxDropMalformed                      // not a valid Teredo packet
	RxDropIndication                     // carried an authentication or origin indication (for clients, not relays)
	RxDropSrcNotTeredo                   // source outside the Teredo prefix
	RxDropMappingMismatch                // source mapping differs from the UDP source
	RxDropFiltered                       // embedded server or UDP source not global unicast
	RxDropDstTeredo                      // destination is itself a Teredo address
	RxDropDstScope                       // link-local, multicast, loopback or unspecified destination
	RxDropDstNotServed                   // host-specific mode: not one of the host's addresses
	RxDropUnknownPeer                    // bubble from, or (with DropUnknownPeers) data from, a peer not in the table
	RxDropRateLimited                    // too many slow-path packets from one IPv4 source
	RxErrors                             // IPv6-side write errors
	ICMPSent                             // ICMPv6 errors written to the IPv6 side
	ICMPRateLimited                      // ICMPv6 errors suppressed by the rate limit
	RxHairpinned                         // Hairpin: sent from one Teredo client to another
	RxDropHopLimit                       // Hairpin: a packet between Teredo clients whose hop limit ran out
	PeersChallenged                      // Hairpin: clients bubbled because their packets came from another mapping
	numCounters
)

// counterKeys places each counter in the metrics model every role shares
// (see internal/metrics): a packet by direction and result, a drop by
// reason, or a peer event. Drop reasons keep their path (tx: from the IPv6
// side towards Teredo clients, rx: from clients) because the same check
// means different things on the two paths.
var counterKeys = [numCounters]metrics.Key{
	TxForwarded:           {Kind: metrics.Packets, Direction: metrics.TX, Name: "forwarded"},
	TxQueued:              {Kind: metrics.Packets, Direction: metrics.TX, Name: "queued"},
	TxFlushed:             {Kind: metrics.Packets, Direction: metrics.TX, Name: "flushed"},
	TxBubblesIndirect:     {Kind: metrics.Packets, Direction: metrics.TX, Name: "bubbles_indirect"},
	TxBubblesDirect:       {Kind: metrics.Packets, Direction: metrics.TX, Name: "bubbles_direct"},
	TxDropMalformed:       {Kind: metrics.Dropped, Name: "tx_malformed"},
	TxDropMulticast:       {Kind: metrics.Dropped, Name: "tx_multicast"},
	TxDropNotTeredo:       {Kind: metrics.Dropped, Name: "tx_not_teredo"},
	TxDropFiltered:        {Kind: metrics.Dropped, Name: "tx_filtered"},
	TxDropQueueFull:       {Kind: metrics.Dropped, Name: "tx_queue_full"},
	TxDropRateLimited:     {Kind: metrics.Dropped, Name: "tx_rate_limited"},
	TxDropUnreachable:     {Kind: metrics.Dropped, Name: "tx_unreachable"},
	TxErrors:              {Kind: metrics.Packets, Direction: metrics.TX, Name: "errors"},
	PeersUnreachable:      {Kind: metrics.PeerEvents, Name: "unreachable"},
	RxForwarded:           {Kind: metrics.Packets, Direction: metrics.RX, Name: "forwarded"},
	RxBubbles:             {Kind: metrics.Packets, Direction: metrics.RX, Name: "bubbles"},
	RxSymmetricNAT:        {Kind: metrics.PeerEvents, Name: "symmetric_nat"},
	RxNewPeers:            {Kind: metrics.PeerEvents, Name: "new"},
	RxDropMalformed:       {Kind: metrics.Dropped, Name: "rx_malformed"},
	RxDropIndication:      {Kind: metrics.Dropped, Name: "rx_indication"},
	RxDropSrcNotTeredo:    {Kind: metrics.Dropped, Name: "rx_src_not_teredo"},
	RxDropMappingMismatch: {Kind: metrics.Dropped, Name: "rx_mapping_mismatch"},
	RxDropFiltered:        {Kind: metrics.Dropped, Name: "rx_filtered"},
	RxDropDstTeredo:       {Kind: metrics.Dropped, Name: "rx_dst_teredo"},
	RxDropDstScope:        {Kind: metrics.Dropped, Name: "rx_dst_scope"},
	RxDropDstNotServed:    {Kind: metrics.Dropped, Name: "rx_dst_not_served"},
	RxDropUnknownPeer:     {Kind: metrics.Dropped, Name: "rx_unknown_peer"},
	RxDropRateLimited:     {Kind: metrics.Dropped, Name: "rx_rate_limited"},
	RxErrors:              {Kind: metrics.Packets, Direction: metrics.RX, Name: "errors"},
	ICMPSent:              {Kind: metrics.Packets, Direction: metrics.TX, Name: "icmp_errors"},
	ICMPRateLimited:       {Kind: metrics.Dropped, Name: "icmp_rate_limited"},
	RxHairpinned:          {Kind: metrics.Packets, Direction: metrics.RX, Name: "hairpinned"},
	RxDropHopLimit:        {Kind: metrics.Dropped, Name: "rx_hop_limit"},
	PeersChallenged:       {Kind: metrics.PeerEvents, Name: "challenged"},
}

// String returns the counter's key in Status: "tx_forwarded" for packets,
// the reason for drops ("rx_malformed", which Status.Drops holds), and
// "peer_new" and the like for peer events.
func (c Counter) String() string {
	if c < 0 || c >= numCounters {
		return fmt.Sprintf("counter(%d)", int(c))
	}
	return counterKeys[c].StatusKey()
}

// counters is padded per counter so that the two forwarding goroutines do
// not share cache lines for their hot counters.
type counters [numCounters]struct {
	n atomic.Uint64
	_ [56]byte
}

func (c *counters) inc(k Counter)           { c[k].n.Add(1) }
func (c *counters) add(k Counter, n uint64) { c[k].n.Add(n) }

// Status is a snapshot of the relay for operators, as GET /status
// returns it. The first five fields are those of every role's status.
type Status struct {
	State         string  `json:"state"` // "running" or "closed"
	Version       string  `json:"version"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Counters holds the packet counters by direction and result
	// ("tx_forwarded") and the peer events ("peer_new"); Drops the drops
	// by reason ("rx_malformed"). Both have every key (see Counter.String).
	Counters map[string]uint64 `json:"counters"`
	Drops    map[string]uint64 `json:"drops"`

	Addr         string `json:"addr"`
	Prefix       string `json:"prefix"`
	HostSpecific bool   `json:"host_specific"`
	Peers        int    `json:"peers"`
	PeersCreated uint64 `json:"peers_created"`
	PeersEvicted uint64 `json:"peers_evicted"`
	PeersExpired uint64 `json:"peers_expired"`
	// Device holds the IPv6 side's own counters, if it has any (see
	// CountingDevice).
	Device map[string]uint64 `json:"device,omitempty"`
}

func (r *Relay) counterAt(i int) uint64 { return r.Counter(Counter(i)) }

// Counter returns the current value of c.
func (r *Relay) Counter(c Counter) uint64 {
	if c < 0 || c >= numCounters {
		return 0
	}
	return r.ctr[c].n.Load()
}

// Status returns a snapshot of the relay's state and counters.
func (r *Relay) Status() Status {
	ts := r.table.Stats()
	state := "running"
	select {
	case <-r.closed:
		state = "closed"
	default:
	}
	s := Status{
		State:         state,
		Version:       metrics.Build().Version,
		UptimeSeconds: r.cfg.Clock.Now().Sub(r.started).Seconds(),
		Addr:          r.conn.LocalAddr().String(),
		Prefix:        r.cfg.Prefix.String(),
		HostSpecific:  r.cfg.HostSpecific,
		Peers:         ts.Peers,
		PeersCreated:  ts.Created,
		PeersEvicted:  ts.Evicted,
		PeersExpired:  ts.Expired,
	}
	s.Counters, s.Drops = metrics.StatusMaps(counterKeys[:], r.counterAt)
	if cd, ok := r.dev.(CountingDevice); ok {
		s.Device = cd.DeviceCounters()
	}
	return s
}

// WritePrometheus writes the counters to w in the Prometheus text exposition
// format: what GET /metrics serves but teredo_build_info, which a program
// that embeds several roles writes once.
func (r *Relay) WritePrometheus(w io.Writer) error {
	mw := metrics.NewWriter(w)
	r.writeMetrics(mw)
	return mw.Err()
}

func (r *Relay) writeMetrics(w *metrics.Writer) {
	ts := r.table.Stats()
	w.Role("relay", counterKeys[:], r.counterAt)
	w.Gauge("teredo_relay_peers", "Entries in the peer table.", float64(ts.Peers))
	w.Counter("teredo_relay_peers_created_total", "Peer entries created.", ts.Created)
	w.Counter("teredo_relay_peers_evicted_total", "Peer entries evicted to make room.", ts.Evicted)
	w.Counter("teredo_relay_peers_expired_total", "Peer entries removed when idle.", ts.Expired)
	if cd, ok := r.dev.(CountingDevice); ok {
		dc := cd.DeviceCounters()
		keys := make([]string, 0, len(dc))
		for k := range dc {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		w.Header("teredo_relay_device_events_total", "What the IPv6-side device did (TUN offload: packets written and coalesced, super-packets read and split, drops), by event.", metrics.Counter)
		for _, k := range keys {
			w.Sample("teredo_relay_device_events_total", float64(dc[k]), "event", k)
		}
	}
}

// Handler serves the status as JSON at /status and the metrics at /metrics.
func (r *Relay) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r.Status())
	})
	mux.Handle("/metrics", metrics.Handler(func(w *metrics.Writer) {
		w.BuildInfo(metrics.Build())
		r.writeMetrics(w)
	}))
	return mux
}
