package socksd

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/metrics"
	"github.com/teredo-go/teredo/socks5"
)

func testStatusSource() *statusSource {
	start := time.Unix(1000, 0)
	return &statusSource{
		teredo: func() TeredoStatus {
			return TeredoStatus{
				State:    "qualified",
				Addr:     netip.MustParseAddr("2001:0:7f00:2::1"),
				Server:   netip.MustParseAddr("192.0.2.10"),
				Mapped:   netip.MustParseAddrPort("198.51.100.7:4242"),
				NAT:      "restricted",
				Peers:    3,
				MTU:      1280,
				Counters: map[string]uint64{"tx_fast": 10, "bubbles": 2, "odd-name": 1, "peer_relay_fallbacks": 3, "peer_relay_tx": 7},
				Drops:    map[string]uint64{"malformed": 4},
			}
		},
		socks: func() socks5.Stats {
			var st socks5.Stats
			st.Accepted, st.Active, st.BytesUp = 5, 1, 1234
			st.Replies[socks5.ReplySucceeded] = 4
			st.Replies[socks5.ReplyNotAllowed] = 1
			st.UDPDrop.Send = 2
			return st
		},
		serverName: func(a netip.Addr) string { return "teredo.example (" + a.String() + ")" },
		listen:     "127.0.0.1:1080",
		started:    start,
		now:        func() time.Time { return start.Add(90 * time.Second) },
	}
}

func get(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	return res, string(body)
}

func TestStatusJSON(t *testing.T) {
	h := testStatusSource().handler()
	res, body := get(t, h, "/status")
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"state": "qualified", "address": "2001:0:7f00:2::1", "server": "192.0.2.10",
		"server_name": "teredo.example (192.0.2.10)", "mapped": "198.51.100.7:4242",
		"nat": "restricted", "peers": 3.0, "mtu": 1280.0, "listen": "127.0.0.1:1080", "uptime_seconds": 90.0,
		"last_error": "", "ipv6_path": "teredo",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if v, _ := got["version"].(string); v == "" {
		t.Errorf("no version in %s", body)
	}
	// The test process runs at least the test and the HTTP handler.
	if g, _ := got["goroutines"].(float64); g < 2 {
		t.Errorf("goroutines = %v", got["goroutines"])
	}
	counters, _ := got["counters"].(map[string]any)
	drops, _ := got["drops"].(map[string]any)
	socks, _ := got["socks5"].(map[string]any)
	if counters["tx_fast"] != 10.0 || counters["tx_bubbles"] != 2.0 || counters["odd-name"] != 1.0 || drops["malformed"] != 4.0 {
		t.Errorf("counters: %v, drops %v", counters, drops)
	}
	if socks["accepted"] != 5.0 || socks["bytes_up"] != 1234.0 {
		t.Errorf("socks5: %v", socks)
	}
	if replies, _ := socks["replies"].(map[string]any); replies["not_allowed"] != 1.0 || replies["succeeded"] != 4.0 {
		t.Errorf("replies: %v", socks["replies"])
	}
	if res, _ := get(t, h, "/nothing"); res.StatusCode != 404 {
		t.Errorf("/nothing: %d", res.StatusCode)
	}
}

// TestHealthz checks that /healthz is 200 only while IPv6 works: through
// Teredo once qualified, or through the host on the native path.
func TestHealthz(t *testing.T) {
	for _, tt := range []struct {
		state, lastErr, path string
		code                 int
		body                 string
	}{
		{"qualified", "", "teredo", 200, "ok: IPv6 through Teredo\n"},
		{"qualifying", "", "teredo", 503, "qualifying\n"},
		{"offline", "teredo client: no reply from server", "teredo", 503, "offline: teredo client: no reply from server\n"},
		{"offline", "no reply", "native", 200, "ok: IPv6 through the host\n"},
		{"disabled", "", "native", 200, "ok: IPv6 through the host\n"},
		{"disabled", "", "native-down", 503, "no global IPv6 route on the host\n"},
	} {
		src := testStatusSource()
		inner := src.teredo
		src.teredo = func() TeredoStatus {
			st := inner()
			st.State, st.LastError = tt.state, tt.lastErr
			return st
		}
		path, down := strings.CutSuffix(tt.path, "-down")
		src.ipv6Path = func() string { return path }
		src.nativeUp = func() bool { return !down }
		h := src.handler()
		res, body := get(t, h, "/healthz")
		if res.StatusCode != tt.code || body != tt.body {
			t.Errorf("%s/%s: %d %q, want %d %q", tt.state, tt.path, res.StatusCode, body, tt.code, tt.body)
		}
		_, body = get(t, h, "/status")
		var st map[string]any
		if err := json.Unmarshal([]byte(body), &st); err != nil || st["state"] != tt.state || st["last_error"] != tt.lastErr || st["ipv6_path"] != path {
			t.Errorf("status %v (%v)", st, err)
		}
	}
}

func TestStatusMetrics(t *testing.T) {
	res, body := get(t, testStatusSource().handler(), "/metrics")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("%d %s\n%s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	for _, line := range []string{
		"teredo_socks_qualified 1",
		"teredo_socks_ipv6_native 0",
		`teredo_socks_info{state="qualified",address="2001:0:7f00:2::1",server="192.0.2.10",mapped="198.51.100.7:4242",nat="restricted"} 1`,
		"teredo_socks_peers 3",
		`teredo_client_packets_total{direction="tx",result="fast"} 10`,
		`teredo_client_packets_total{direction="tx",result="bubbles"} 2`,
		`teredo_client_packets_total{direction="tx",result="peer_relay"} 7`,
		`teredo_client_peer_events_total{event="relay_fallback"} 3`,
		"teredo_socks_odd_name_total 1",
		`teredo_client_dropped_total{reason="malformed"} 4`,
		"teredo_socks_socks5_accepted_total 5",
		"teredo_socks_socks5_active 1",
		`teredo_socks_socks5_replies_total{reply="not_allowed"} 1`,
		`teredo_socks_socks5_bytes_total{direction="up"} 1234`,
		`teredo_socks_socks5_udp_drops_total{reason="send"} 2`,
	} {
		if !strings.Contains(body, "\n"+line+"\n") {
			t.Errorf("missing %q in\n%s", line, body)
		}
	}
	if probs, err := metrics.Lint(strings.NewReader(body)); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v\n%s", err, probs, body)
	}
}

func TestReporter(t *testing.T) {
	var lines []string
	r := reporter{
		say:    func(f string, args ...any) { lines = append(lines, fmt.Sprintf(f, args...)) },
		addr:   netip.MustParseAddr("2001::1"),
		online: true,
		nat:    "unknown",
	}
	name := func(a netip.Addr) string { return "srv " + a.String() }
	srv := netip.MustParseAddr("192.0.2.1")
	a1, a2 := netip.MustParseAddr("2001::1"), netip.MustParseAddr("2001::2")
	for _, ev := range []Event{
		{Kind: EvQualified, Addr: a1, Server: srv}, // the announced one: silent
		{Kind: EvNAT, NAT: "restricted"},
		{Kind: EvNAT, NAT: "restricted"}, // again: silent
		{Kind: EvAddressChanged, Old: a1, Addr: a2},
		{Kind: EvOffline, Err: io.ErrUnexpectedEOF},
		{Kind: EvOffline, Err: io.ErrUnexpectedEOF}, // still offline: silent
		{Kind: EvQualified, Addr: a2, Server: srv},
		{Kind: EvOffline, Err: io.EOF},
		{Kind: EvQualified, Addr: a1, Server: srv},
	} {
		r.report(ev, name)
	}
	want := []string{
		"NAT type: restricted",
		"address changed from 2001::1 to 2001::2",
		"lost Teredo connectivity (unexpected EOF); retrying",
		"connectivity restored: 2001::2 via srv 192.0.2.1",
		"lost Teredo connectivity (EOF); retrying",
		"connectivity restored with a new address: 2001::1 via srv 192.0.2.1 (was 2001::2)",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
