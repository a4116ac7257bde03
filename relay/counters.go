package relay

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

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
	numCounters
)

var counterNames = [numCounters]string{
	TxForwarded:           "tx_forwarded",
	TxQueued:              "tx_queued",
	TxFlushed:             "tx_flushed",
	TxBubblesIndirect:     "tx_bubbles_indirect",
	TxBubblesDirect:       "tx_bubbles_direct",
	TxDropMalformed:       "tx_drop_malformed",
	TxDropMulticast:       "tx_drop_multicast",
	TxDropNotTeredo:       "tx_drop_not_teredo",
	TxDropFiltered:        "tx_drop_filtered",
	TxDropQueueFull:       "tx_drop_queue_full",
	TxDropRateLimited:     "tx_drop_rate_limited",
	TxDropUnreachable:     "tx_drop_unreachable",
	TxErrors:              "tx_errors",
	PeersUnreachable:      "peers_unreachable",
	RxForwarded:           "rx_forwarded",
	RxBubbles:             "rx_bubbles",
	RxSymmetricNAT:        "rx_symmetric_nat",
	RxNewPeers:            "rx_new_peers",
	RxDropMalformed:       "rx_drop_malformed",
	RxDropIndication:      "rx_drop_indication",
	RxDropSrcNotTeredo:    "rx_drop_src_not_teredo",
	RxDropMappingMismatch: "rx_drop_mapping_mismatch",
	RxDropFiltered:        "rx_drop_filtered",
	RxDropDstTeredo:       "rx_drop_dst_teredo",
	RxDropDstScope:        "rx_drop_dst_scope",
	RxDropDstNotServed:    "rx_drop_dst_not_served",
	RxDropUnknownPeer:     "rx_drop_unknown_peer",
	RxDropRateLimited:     "rx_drop_rate_limited",
	RxErrors:              "rx_errors",
	ICMPSent:              "icmp_sent",
	ICMPRateLimited:       "icmp_rate_limited",
}

// String returns the counter's name as used in the status and metrics.
func (c Counter) String() string {
	if c < 0 || c >= numCounters {
		return fmt.Sprintf("counter(%d)", int(c))
	}
	return counterNames[c]
}

// counters is padded per counter so that the two forwarding goroutines do
// not share cache lines for their hot counters.
type counters [numCounters]struct {
	n atomic.Uint64
	_ [56]byte
}

func (c *counters) inc(k Counter)           { c[k].n.Add(1) }
func (c *counters) add(k Counter, n uint64) { c[k].n.Add(n) }

// Status is a snapshot of the relay for operators.
type Status struct {
	Addr         string            `json:"addr"`
	Prefix       string            `json:"prefix"`
	HostSpecific bool              `json:"host_specific"`
	Uptime       string            `json:"uptime"`
	Peers        int               `json:"peers"`
	PeersCreated uint64            `json:"peers_created"`
	PeersEvicted uint64            `json:"peers_evicted"`
	PeersExpired uint64            `json:"peers_expired"`
	Counters     map[string]uint64 `json:"counters"`
	// Device holds the IPv6 side's own counters, if it has any (see
	// CountingDevice).
	Device map[string]uint64 `json:"device,omitempty"`
}

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
	s := Status{
		Addr:         r.conn.LocalAddr().String(),
		Prefix:       r.cfg.Prefix.String(),
		HostSpecific: r.cfg.HostSpecific,
		Uptime:       r.cfg.Clock.Now().Sub(r.started).Round(time.Second).String(),
		Peers:        ts.Peers,
		PeersCreated: ts.Created,
		PeersEvicted: ts.Evicted,
		PeersExpired: ts.Expired,
		Counters:     make(map[string]uint64, numCounters),
	}
	for c := range numCounters {
		s.Counters[c.String()] = r.Counter(c)
	}
	if cd, ok := r.dev.(CountingDevice); ok {
		s.Device = cd.DeviceCounters()
	}
	return s
}

// WritePrometheus writes the counters to w in the Prometheus text exposition
// format, the same text GET /metrics serves.
func (r *Relay) WritePrometheus(w io.Writer) error {
	mw := metrics.NewWriter(w)
	r.writeMetrics(mw)
	return mw.Err()
}

func (r *Relay) writeMetrics(w *metrics.Writer) {
	ts := r.table.Stats()
	w.Header("teredo_relay_events_total", "Packets forwarded, bubbles sent and packets dropped, by event.", metrics.Counter)
	for c := range numCounters {
		w.Sample("teredo_relay_events_total", float64(r.Counter(c)), "event", c.String())
	}
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
	mux.Handle("/metrics", metrics.Handler(r.writeMetrics))
	return mux
}
