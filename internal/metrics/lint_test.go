package metrics

import (
	"strings"
	"testing"
)

func TestLint(t *testing.T) {
	tests := []struct {
		name, text string
		want       string // a substring of a problem; "" for none
	}{
		{"good", "# HELP a_total Things.\n# TYPE a_total counter\na_total{reason=\"x\"} 1\na_total{reason=\"y\\\"\\n\"} 2\n# HELP b Level.\n# TYPE b gauge\nb 0.5\n", ""},
		{"no help", "# TYPE a_total counter\na_total 1\n", "has no HELP"},
		{"empty help", "# HELP a_total \n# TYPE a_total counter\na_total 1\n", "no help text"},
		{"no type", "# HELP a_total x\na_total 1\n", "before (or without) its TYPE"},
		{"counter without total", "# HELP a x\n# TYPE a counter\na 1\n", "_total suffix"},
		{"gauge with total", "# HELP a_total x\n# TYPE a_total gauge\na_total 1\n", "non-counter"},
		{"camel", "# HELP aB x\n# TYPE aB gauge\naB 1\n", "snake_case"},
		{"colon", "# HELP a:b x\n# TYPE a:b gauge\na:b 1\n", "colons"},
		{"unit", "# HELP a_milliseconds x\n# TYPE a_milliseconds gauge\na_milliseconds 1\n", "base unit"},
		{"abbreviation", "# HELP a_ms x\n# TYPE a_ms gauge\na_ms 1\n", "abbreviated"},
		{"type in name", "# HELP a_counter_total x\n# TYPE a_counter_total counter\na_counter_total 1\n", "metric type"},
		{"reserved suffix", "# HELP a_count x\n# TYPE a_count gauge\na_count 1\n", "reserved"},
		{"duplicate", "# HELP a x\n# TYPE a gauge\na{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 1\n", "duplicate series"},
		{"duplicate label", "# HELP a x\n# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", "given twice"},
		{"bad value", "# HELP a x\n# TYPE a gauge\na one\n", "not a number"},
		{"unterminated", "# HELP a x\n# TYPE a gauge\na{x=\"1} 1\n", "unterminated"},
		{"split", "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n", "split"},
		{"help after samples", "# TYPE a gauge\na 1\n# HELP a x\n", "after its samples"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			probs, err := Lint(strings.NewReader(tt.text))
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "" {
				if len(probs) != 0 {
					t.Fatalf("problems in good input: %v", probs)
				}
				return
			}
			for _, p := range probs {
				if strings.Contains(p.Text, tt.want) {
					return
				}
			}
			t.Fatalf("got %v, want a problem containing %q", probs, tt.want)
		})
	}
}

// TestWriterLints checks that what the model writes passes the linter.
func TestWriterLints(t *testing.T) {
	keys := []Key{
		{Kind: Packets, Direction: RX, Name: "forwarded"},
		{Kind: Packets, Direction: TX, Name: "forwarded"},
		{Kind: Dropped, Name: "malformed"},
		{Kind: PeerEvents, Name: "unreachable"},
	}
	var sb strings.Builder
	w := NewWriter(&sb)
	w.BuildInfo(BuildInfo{Version: "(devel)", Revision: "abc", GoVersion: "go1.26"})
	w.Role("relay", keys, func(i int) uint64 { return uint64(i) })
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
	probs, err := Lint(strings.NewReader(sb.String()))
	if err != nil || len(probs) > 0 {
		t.Fatalf("%v %v in\n%s", err, probs, sb.String())
	}
	for _, s := range []string{
		`teredo_relay_packets_total{direction="tx",result="forwarded"} 1`,
		`teredo_relay_dropped_total{reason="malformed"} 2`,
		`teredo_relay_peer_events_total{event="unreachable"} 3`,
		`teredo_build_info{version="(devel)",revision="abc",goversion="go1.26"} 1`,
	} {
		if !strings.Contains(sb.String(), s+"\n") {
			t.Errorf("missing %s in\n%s", s, sb.String())
		}
	}
	c, d := StatusMaps(keys, func(i int) uint64 { return uint64(i) })
	if c["rx_forwarded"] != 0 || c["tx_forwarded"] != 1 || d["malformed"] != 2 || c["peer_unreachable"] != 3 || len(c) != 3 || len(d) != 1 {
		t.Errorf("StatusMaps = %v, %v", c, d)
	}
}
