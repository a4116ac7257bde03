package relay

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// FuzzReceive feeds arbitrary datagrams to the receive path: no panic, and
// every datagram ends counted or forwarded.
func FuzzReceive(f *testing.F) {
	peerAddr := teredoAddr(serverIP, clientMap)
	f.Add(udpPacket(peerAddr, native, []byte("x")), uint16(40000))
	f.Add(proto.AppendBubble(nil, peerAddr, netip.MustParseAddr("fe80::1"), 0), uint16(1))
	f.Add([]byte{0x00, 0x01, 0x00, 0x00}, uint16(3544))
	r, err := New(Config{Conn: &nullConn{}, Device: &nullDevice{}, SourceRate: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer r.table.Close()
	var sc scratch
	f.Fuzz(func(t *testing.T, b []byte, port uint16) {
		r.receive(b, netip.AddrPortFrom(clientMap.Addr(), port), &sc)
	})
}

// FuzzTransmit feeds arbitrary packets to the transmit path.
func FuzzTransmit(f *testing.F) {
	f.Add(udpPacket(native, teredoAddr(serverIP, clientMap), []byte("x")))
	f.Add(udpPacket(native, otherNat, nil))
	f.Add([]byte{0x60})
	r, err := New(Config{Conn: &nullConn{}, Device: &nullDevice{}, SourceRate: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer r.table.Close()
	var sc scratch
	f.Fuzz(func(t *testing.T, b []byte) {
		r.transmit(b, &sc)
	})
}

func TestHandler(t *testing.T) {
	h := newHarness(t, nil)
	h.transmit(udpPacket(native, otherNat, nil))
	srv := httptest.NewServer(h.r.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Counters["tx_drop_not_teredo"] != 1 || st.Addr != relayAddr.String() {
		t.Fatalf("status %+v, %v", st, err)
	}
	resp, err = srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	if !strings.Contains(sb.String(), `teredo_relay_events_total{event="tx_drop_not_teredo"} 1`) {
		t.Fatalf("metrics:\n%s", sb.String())
	}
}

// countingDevice is a fakeDevice with counters of its own.
type countingDevice struct{ *fakeDevice }

func (countingDevice) DeviceCounters() map[string]uint64 {
	return map[string]uint64{"coalesced": 40, "read_super": 3}
}

// TestDeviceCounters checks that a CountingDevice's counters reach /status
// and /metrics.
func TestDeviceCounters(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Device = countingDevice{newFakeDevice()} })
	if st := h.r.Status(); st.Device["coalesced"] != 40 || st.Device["read_super"] != 3 {
		t.Fatalf("status device counters %v", st.Device)
	}
	if st := newHarness(t, nil).r.Status(); st.Device != nil {
		t.Errorf("a device without counters shows %v", st.Device)
	}
	var sb strings.Builder
	if err := h.r.WritePrometheus(&sb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`teredo_relay_device_events_total{event="coalesced"} 40`,
		`teredo_relay_device_events_total{event="read_super"} 3`,
	} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, sb.String())
		}
	}
}
