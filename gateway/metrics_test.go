package gateway_test

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/teredo-go/teredo/internal/metrics"
)

// TestStatusAndMetrics checks the gateway's /status skeleton and that its
// /metrics, which include the server's and the relay's, pass promtool's
// rules with one teredo_build_info.
func TestStatusAndMetrics(t *testing.T) {
	in, _ := start(t)
	srv := httptest.NewServer(in.Gateway().Handler())
	defer srv.Close()
	get := func(path string) string {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	var st struct {
		State, Version string
		Counters       map[string]uint64
		Drops          map[string]uint64
		Server, Relay  struct{ State string }
	}
	if body := get("/status"); json.Unmarshal([]byte(body), &st) != nil || st.State != "running" || st.Version == "" ||
		st.Server.State != "running" || st.Relay.State != "running" || len(st.Counters) != 6 || len(st.Drops) != 4 {
		t.Errorf("/status: %s", body)
	}
	body := get("/metrics")
	if probs, err := metrics.Lint(strings.NewReader(body)); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v\n%s", err, probs, body)
	}
	for _, want := range []string{"\nteredo_build_info{", "\nteredo_gateway_packets_total{", "\nteredo_server_packets_total{", "\nteredo_relay_packets_total{"} {
		if strings.Count(body, want) < 1 || want == "\nteredo_build_info{" && strings.Count(body, want) != 1 {
			t.Errorf("%q in /metrics %d times:\n%s", want, strings.Count(body, want), body)
		}
	}
}
