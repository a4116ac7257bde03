package relay

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/teredo-go/teredo/internal/metrics"
)

// TestMetricsLint checks /metrics against promtool's rules, with a device
// that has counters of its own so that every family is written.
func TestMetricsLint(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Device = countingDevice{newFakeDevice()} })
	h.transmit(udpPacket(native, otherNat, nil))
	srv := httptest.NewServer(h.r.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	io.Copy(&sb, resp.Body)
	resp.Body.Close()
	probs, err := metrics.Lint(strings.NewReader(sb.String()))
	if err != nil || len(probs) > 0 {
		t.Fatalf("lint: %v %v\n%s", err, probs, sb.String())
	}
	for _, want := range []string{
		`teredo_relay_packets_total{direction="tx",result="forwarded"} 0`,
		`teredo_relay_dropped_total{reason="tx_not_teredo"} 1`,
		`teredo_relay_peer_events_total{event="new"} 0`,
		`teredo_build_info{version="`,
	} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, sb.String())
		}
	}
}

// TestStatusKeys checks that every counter has its own key in Status, so
// that none hides another.
func TestStatusKeys(t *testing.T) {
	st := newHarness(t, nil).r.Status()
	if got := len(st.Counters) + len(st.Drops); got != int(numCounters) {
		t.Errorf("status has %d counter keys, want %d: %v %v", got, numCounters, st.Counters, st.Drops)
	}
	for c := range numCounters {
		_, inCounters := st.Counters[c.String()]
		_, inDrops := st.Drops[c.String()]
		if inCounters == inDrops {
			t.Errorf("%v: in counters %v, in drops %v", c, inCounters, inDrops)
		}
	}
}
