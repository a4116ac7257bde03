package socksd

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"time"

	"github.com/teredo-go/teredo/internal/metrics"
	"github.com/teredo-go/teredo/socks5"
)

// TeredoStatus is a snapshot of the Teredo side, in the command's terms, so
// that the status page does not follow every change of the stack's API.
type TeredoStatus struct {
	State string // "qualifying", "qualified", "offline", "closed", "disabled"
	// LastError says why the stack is not qualified; empty while it is.
	LastError string
	Addr      netip.Addr
	Public    netip.Addr // seen by the IPv6 internet behind a teredo-gateway; zero otherwise
	Server    netip.Addr
	Mapped    netip.AddrPort
	NAT       string // "unknown", "restricted", "symmetric", "cone"
	// NATPorts is how a symmetric NAT picks ports: "sequential",
	// "port-preserving", "random", or empty (client/portpredict.go).
	NATPorts string
	Peers    int
	MTU      int
	// Counters are cumulative packet counts by name (snake_case), Drops
	// the client's discarded packets by reason.
	Counters map[string]uint64
	Drops    map[string]uint64
	// PortMap is the port mapping's state; nil when it is off.
	PortMap *portMapJSON
}

// statusSource gathers what /status and /metrics show.
type statusSource struct {
	teredo     func() TeredoStatus
	socks      func() socks5.Stats
	serverName func(netip.Addr) string // the -server name an address came from
	ipv6Path   func() string           // "teredo" or "native"; nil means "teredo"
	nativeUp   func() bool             // the native path has a route; nil means yes
	listen     string
	started    time.Time
	now        func() time.Time
}

// statusJSON is the body of GET /status: the fields every role's status
// opens with (state, version, uptime_seconds, counters, drops), then the
// proxy's own.
type statusJSON struct {
	State string `json:"state"`
	// LastError says why the stack is not qualified; IPv6Path is
	// "teredo" or "native" (-ipv6).
	LastError string  `json:"last_error"`
	IPv6Path  string  `json:"ipv6_path"`
	Version   string  `json:"version"`
	Uptime    float64 `json:"uptime_seconds"`
	// Counters are the client's, keyed as clientKeys says for those in
	// the shared model and by their own name for the rest (link, TCP);
	// Drops the client's drops by reason.
	Counters map[string]uint64 `json:"counters"`
	Drops    map[string]uint64 `json:"drops"`

	Address    string     `json:"address"`
	Public     string     `json:"public_address,omitempty"`
	Server     string     `json:"server"`
	ServerName string     `json:"server_name,omitempty"`
	Mapped     string     `json:"mapped"`
	NAT        string     `json:"nat"`
	NATPorts   string     `json:"nat_ports,omitempty"`
	Peers      int        `json:"peers"`
	MTU        int        `json:"mtu"`
	Listen     string     `json:"listen"`
	SOCKS5     socks5JSON `json:"socks5"`
	// Goroutines is the process's goroutine count: flat under a steady
	// load unless sessions leak (the lab's soak test watches it).
	Goroutines int          `json:"goroutines"`
	PortMap    *portMapJSON `json:"portmap,omitempty"`
}

// clientKeys places the Teredo client's counters, by their name in
// teredoStatus.Counters, in the metrics model every role shares (see
// internal/metrics). The others (link, TCP, peer-table queue counts that
// the drops already hold) are written on their own.
var clientKeys = map[string]metrics.Key{
	"tx_fast":               {Kind: metrics.Packets, Direction: metrics.TX, Name: "fast"},
	"tx_queued":             {Kind: metrics.Packets, Direction: metrics.TX, Name: "queued"},
	"tx_flushed":            {Kind: metrics.Packets, Direction: metrics.TX, Name: "flushed"},
	"rx_delivered":          {Kind: metrics.Packets, Direction: metrics.RX, Name: "delivered"},
	"rx_held_delivered":     {Kind: metrics.Packets, Direction: metrics.RX, Name: "held_delivered"},
	"router_solicitations":  {Kind: metrics.Packets, Direction: metrics.TX, Name: "router_solicitations"},
	"router_advertisements": {Kind: metrics.Packets, Direction: metrics.RX, Name: "router_advertisements"},
	"bubbles":               {Kind: metrics.Packets, Direction: metrics.TX, Name: "bubbles"},
	"bubble_replies":        {Kind: metrics.Packets, Direction: metrics.TX, Name: "bubble_replies"},
	"echo_requests":         {Kind: metrics.Packets, Direction: metrics.TX, Name: "echo_requests"},
	"icmp_errors":           {Kind: metrics.Packets, Direction: metrics.TX, Name: "icmp_errors"},
	"peers_created":         {Kind: metrics.PeerEvents, Name: "created"},
	"peers_evicted":         {Kind: metrics.PeerEvents, Name: "evicted"},
	"peers_expired":         {Kind: metrics.PeerEvents, Name: "expired"},
	// -peer-relay (client/peerrelay.go).
	"peer_relay_fallbacks":     {Kind: metrics.PeerEvents, Name: "relay_fallback"},
	"peer_relay_proved":        {Kind: metrics.PeerEvents, Name: "relay_path_proved"},
	"peer_relay_tx":            {Kind: metrics.Packets, Direction: metrics.TX, Name: "peer_relay"},
	"peer_relay_server_echoes": {Kind: metrics.Packets, Direction: metrics.RX, Name: "server_echo_requests"},
	// Port prediction behind a sequential NAT (client/portpredict.go).
	"port_predictions":         {Kind: metrics.PeerEvents, Name: "port_predicted"},
	"port_prediction_failures": {Kind: metrics.PeerEvents, Name: "port_prediction_failed"},
	"random_port_bubbles":      {Kind: metrics.Packets, Direction: metrics.TX, Name: "random_port_bubbles"},
	"random_port_answers":      {Kind: metrics.Packets, Direction: metrics.TX, Name: "random_port_answers"},
}

// clientCounters splits the client's counters into those of the shared
// model, keyed by metrics.Key.StatusKey, and the rest; drops become
// Dropped keys. keys and values are sorted by status key.
func clientCounters(t TeredoStatus) (keys []metrics.Key, values []uint64, other map[string]uint64) {
	other = map[string]uint64{}
	byKey := map[string]int{}
	add := func(k metrics.Key, v uint64) {
		if i, ok := byKey[k.StatusKey()]; ok {
			values[i] += v
			return
		}
		byKey[k.StatusKey()] = len(keys)
		keys, values = append(keys, k), append(values, v)
	}
	for _, name := range sortedKeys(t.Counters) {
		if k, ok := clientKeys[name]; ok {
			add(k, t.Counters[name])
		} else {
			other[name] = t.Counters[name]
		}
	}
	for _, reason := range sortedKeys(t.Drops) {
		add(metrics.Key{Kind: metrics.Dropped, Name: reason}, t.Drops[reason])
	}
	return keys, values, other
}

type socks5JSON struct {
	Accepted            uint64            `json:"accepted"`
	Rejected            uint64            `json:"rejected"`
	Active              int64             `json:"active"`
	HandshakeFailures   uint64            `json:"handshake_failures"`
	AuthFailures        uint64            `json:"auth_failures"`
	Replies             map[string]uint64 `json:"replies"`
	BytesUp             uint64            `json:"bytes_up"`
	BytesDown           uint64            `json:"bytes_down"`
	Associations        uint64            `json:"udp_associations"`
	ActiveAssociations  int64             `json:"udp_associations_active"`
	ExpiredAssociations uint64            `json:"udp_associations_expired"`
	UDPUp               uint64            `json:"udp_up"`
	UDPDown             uint64            `json:"udp_down"`
	UDPDrops            map[string]uint64 `json:"udp_drops"`
}

// replyLabels name socks5 reply codes in JSON keys and metric labels.
var replyLabels = []string{
	"succeeded", "general_failure", "not_allowed", "network_unreachable",
	"host_unreachable", "connection_refused", "ttl_expired",
	"command_not_supported", "address_type_not_supported",
}

func replyLabel(code int) string {
	if code < len(replyLabels) {
		return replyLabels[code]
	}
	return fmt.Sprintf("0x%02x", code)
}

func udpDrops(d socks5.UDPDrops) map[string]uint64 {
	return map[string]uint64{
		"source": d.Source, "malformed": d.Malformed, "fragmented": d.Fragmented,
		"resolve": d.Resolve, "send": d.Send, "no_client": d.NoClient,
		"reply": d.Reply, "recv": d.Recv,
	}
}

func addrString[T interface {
	IsValid() bool
	String() string
}](a T) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func (s *statusSource) snapshot() statusJSON {
	t := s.teredo()
	st := s.socks()
	out := statusJSON{
		State:     t.State,
		LastError: t.LastError,
		IPv6Path:  "teredo",
		Version:   metrics.Build().Version,
		Uptime:    s.now().Sub(s.started).Seconds(),
		Address:   addrString(t.Addr),
		Public:    addrString(t.Public),
		Server:    addrString(t.Server),
		Mapped:    addrString(t.Mapped),
		NAT:       t.NAT,
		NATPorts:  t.NATPorts,
		Peers:     t.Peers,
		MTU:       t.MTU,
		Listen:    s.listen,
	}
	if s.ipv6Path != nil {
		out.IPv6Path = s.ipv6Path()
	}
	out.Goroutines = runtime.NumGoroutine()
	out.PortMap = t.PortMap
	if s.serverName != nil && t.Server.IsValid() {
		if n := s.serverName(t.Server); n != t.Server.String() {
			out.ServerName = n
		}
	}
	keys, values, other := clientCounters(t)
	out.Counters, out.Drops = metrics.StatusMaps(keys, func(i int) uint64 { return values[i] })
	for k, v := range other {
		out.Counters[k] = v
	}
	replies := map[string]uint64{}
	for code, n := range st.Replies {
		replies[replyLabel(code)] = n
	}
	out.SOCKS5 = socks5JSON{
		Accepted: st.Accepted, Rejected: st.Rejected, Active: st.Active,
		HandshakeFailures: st.HandshakeFailures, AuthFailures: st.AuthFailures,
		Replies: replies, BytesUp: st.BytesUp, BytesDown: st.BytesDown,
		Associations: st.Associations, ActiveAssociations: st.ActiveAssociations,
		ExpiredAssociations: st.ExpiredAssociations,
		UDPUp:               st.UDPUp, UDPDown: st.UDPDown, UDPDrops: udpDrops(st.UDPDrop),
	}
	return out
}

// healthy reports whether IPv6 works through the path in use, with a
// one-line reason.
func (s *statusSource) healthy() (bool, string) {
	st := s.snapshot()
	switch {
	case st.IPv6Path == "native" && s.nativeUp != nil && !s.nativeUp():
		return false, "no global IPv6 route on the host"
	case st.IPv6Path == "native":
		return true, "ok: IPv6 through the host"
	case st.State == "qualified":
		return true, "ok: IPv6 through Teredo"
	case st.LastError != "":
		return false, st.State + ": " + st.LastError
	}
	return false, st.State
}

// handler serves GET /status (JSON), GET /healthz (200 while IPv6 works,
// 503 otherwise, with a one-line body for people and probes) and GET
// /metrics (Prometheus text).
func (s *statusSource) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		ok, why := s.healthy()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.snapshot())
	})
	mux.Handle("/metrics", metrics.Handler(s.writeMetrics))
	return mux
}

// sortedKeys gives metrics a stable order.
func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (s *statusSource) writeMetrics(w *metrics.Writer) {
	st := s.snapshot()
	qualified := 0.0
	if st.State == "qualified" {
		qualified = 1
	}
	w.Gauge("teredo_socks_qualified", "Whether the Teredo client has an address (1) or not (0).", qualified)
	native := 0.0
	if st.IPv6Path == "native" {
		native = 1
	}
	w.Gauge("teredo_socks_ipv6_native", "Whether IPv6 goes through the host's own route (1) or through Teredo (0), per -ipv6.", native)
	w.Header("teredo_socks_info", "The Teredo address, server, mapped endpoint and NAT type, as labels.", metrics.Gauge)
	w.Sample("teredo_socks_info", 1, "state", st.State, "address", st.Address, "server", st.Server, "mapped", st.Mapped, "nat", st.NAT)
	w.Gauge("teredo_socks_peers", "Entries in the Teredo peer list.", float64(st.Peers))
	w.Gauge("teredo_socks_uptime_seconds", "Seconds since the proxy started.", st.Uptime)
	w.Gauge("go_goroutines", "Goroutines in the proxy process.", float64(st.Goroutines))

	w.BuildInfo(metrics.Build())
	t := s.teredo()
	keys, values, other := clientCounters(t)
	w.Role("client", keys, func(i int) uint64 { return values[i] })
	for _, k := range sortedKeys(other) {
		name := "teredo_socks_" + metricSafe(k) + "_total"
		w.Counter(name, "Teredo stack counter "+k+".", other[k])
	}

	c := st.SOCKS5
	w.Counter("teredo_socks_socks5_accepted_total", "SOCKS5 connections accepted, including rejected ones.", c.Accepted)
	w.Counter("teredo_socks_socks5_rejected_total", "SOCKS5 connections closed at once because too many sessions were active.", c.Rejected)
	w.Gauge("teredo_socks_socks5_active", "SOCKS5 sessions in progress.", float64(c.Active))
	w.Counter("teredo_socks_socks5_handshake_failures_total", "SOCKS5 handshakes that failed before a reply.", c.HandshakeFailures)
	w.Counter("teredo_socks_socks5_auth_failures_total", "SOCKS5 authentications with a wrong user name or password.", c.AuthFailures)
	w.Header("teredo_socks_socks5_replies_total", "SOCKS5 replies sent, by reply.", metrics.Counter)
	for _, k := range sortedKeys(c.Replies) {
		w.Sample("teredo_socks_socks5_replies_total", float64(c.Replies[k]), "reply", k)
	}
	w.Header("teredo_socks_socks5_bytes_total", "CONNECT payload bytes relayed, by direction.", metrics.Counter)
	w.Sample("teredo_socks_socks5_bytes_total", float64(c.BytesUp), "direction", "up")
	w.Sample("teredo_socks_socks5_bytes_total", float64(c.BytesDown), "direction", "down")
	w.Counter("teredo_socks_socks5_udp_associations_total", "UDP associations established.", c.Associations)
	w.Gauge("teredo_socks_socks5_udp_associations_active", "UDP associations in progress.", float64(c.ActiveAssociations))
	w.Counter("teredo_socks_socks5_udp_associations_expired_total", "UDP associations ended by the idle timeout.", c.ExpiredAssociations)
	w.Header("teredo_socks_socks5_udp_datagrams_total", "Datagrams relayed, by direction.", metrics.Counter)
	w.Sample("teredo_socks_socks5_udp_datagrams_total", float64(c.UDPUp), "direction", "up")
	w.Sample("teredo_socks_socks5_udp_datagrams_total", float64(c.UDPDown), "direction", "down")
	w.Header("teredo_socks_socks5_udp_drops_total", "Datagrams the UDP relay discarded, by reason.", metrics.Counter)
	for _, k := range sortedKeys(c.UDPDrops) {
		w.Sample("teredo_socks_socks5_udp_drops_total", float64(c.UDPDrops[k]), "reason", k)
	}
}

// metricSafe maps a counter name onto the characters metric names allow.
func metricSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}
