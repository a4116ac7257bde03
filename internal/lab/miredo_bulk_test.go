package lab

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// TestClientBulkToMiredo sends ten 1 MiB echoes from our client to a Miredo client
// behind home routers on one topology. Miredo's UDP socket overflows in bursts
// (RcvbufErrors in the peer's namespace), and our stack must recover promptly each
// time. With gVisor's RACK loss detection at our pin (PROBE_EXTRA="-tcp-recovery 1")
// the stack loops RTO → SACK recovery → RTO and about one transfer in twelve takes
// 2-21 s; with RACK off, the stack's default, all take 0.1-0.6 s:
//
//	CI=true go test -count=1 -run TestClientBulkToMiredo -v ./lab
//	CI=true PROBE_EXTRA="-tcp-recovery 1" go test ... (RACK on)
func TestClientBulkToMiredo(t *testing.T) {
	impl := serverImpls[0]
	impl.require(t)
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}, NoRelay: true, NoV6Host: true})
	srv := impl.start(t, l)
	p := startProbe(t, l.Clients["a1"], srv, probeOptions{Extra: envFields("PROBE_EXTRA")})
	m := StartMiredoClient(t, l.Clients["a2"], srv.Primary, MiredoClientOptions{})
	serveEcho(t, m.Host, netip.AddrPortFrom(m.Addr, 7001))
	slow := 0
	for i := range 10 {
		r, err := p.echo(30*time.Second, netip.AddrPortFrom(m.Addr, 7001), miredoEchoSize)
		st := p.status(t)
		if err != nil {
			t.Fatalf("#%d: %v\ntcp: %v", i, err, st.TCP)
		}
		t.Logf("#%d: %d ms, tcp timeouts so far %d, retransmits %d", i, r.Milliseconds, st.TCP["timeouts"], st.TCP["retransmits"])
		if r.Milliseconds > 3000 {
			slow++
		}
	}
	t.Logf("peer's UDP counters: %s", m.Host.MustRun(t, "grep", "Udp:", "/proc/net/snmp"))
	if slow > 0 {
		t.Errorf("%d of 10 transfers took more than 3 s", slow)
	}
}

func envFields(name string) []string { return strings.Fields(os.Getenv(name)) }
