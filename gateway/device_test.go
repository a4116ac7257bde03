package gateway

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/nptv6"
	"github.com/teredo-go/teredo/proto"
)

// batchDev is a relay.BatchDevice and BatchWriter that returns queued
// packets and records written ones.
type batchDev struct {
	in      [][]byte
	written [][]byte
}

func (d *batchDev) ReadPacket(b []byte) (int, error) {
	sizes := []int{0}
	if _, err := d.ReadPackets([][]byte{b}, sizes); err != nil {
		return 0, err
	}
	return sizes[0], nil
}

func (d *batchDev) ReadPackets(bufs [][]byte, sizes []int) (int, error) {
	if len(d.in) == 0 {
		return 0, errors.New("empty")
	}
	n := 0
	for ; n < len(bufs) && len(d.in) > 0; n++ {
		sizes[n] = copy(bufs[n], d.in[0])
		d.in = d.in[1:]
	}
	return n, nil
}

func (d *batchDev) WritePacket(p []byte) error {
	d.written = append(d.written, bytes.Clone(p))
	return nil
}

func (d *batchDev) WritePackets(pkts [][]byte) (int, error) {
	for _, p := range pkts {
		d.WritePacket(p)
	}
	return len(pkts), nil
}

func (d *batchDev) Close() error { return nil }

func TestDevice(t *testing.T) {
	gw := netip.MustParseAddr("198.18.0.7")
	nat, err := nptv6.New(proto.ServerPrefix(gw), netip.MustParsePrefix("2001:db8:2::/64"))
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{nat: nat}
	client := proto.Address{Server: gw, Mapped: netip.MustParseAddrPort("203.0.113.5:40000")}.Addr()
	foreign := proto.Address{Server: netip.MustParseAddr("192.0.2.1"), Mapped: netip.MustParseAddrPort("203.0.113.5:40000")}.Addr()
	host := netip.MustParseAddr("2001:db8:1::6")
	pub, _ := nat.ToOutside(client)
	echo := func(src, dst netip.Addr) []byte {
		return proto.AppendEcho(nil, src, dst, 64, proto.ICMPEchoRequest, 1, 1, []byte("x"))
	}

	dev := &batchDev{}
	d := &device{dev: dev, g: g}
	n, err := d.WritePackets([][]byte{echo(client, host), echo(foreign, host), {0x60, 1}, echo(client, host)})
	if n != 2 || !errors.Is(err, errForeign) || len(dev.written) != 2 || proto.Src(dev.written[0]) != pub {
		t.Fatalf("WritePackets = %d, %v; written %d", n, err, len(dev.written))
	}
	if st := g.Stats(); st.TranslatedOut != 2 || st.ForeignSource != 1 || st.Malformed != 1 {
		t.Fatalf("stats %+v", st)
	}

	dev.in = [][]byte{{0x60, 0, 0}, echo(host, pub), echo(host, netip.MustParseAddr("2001:db8:9::1"))}
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
	sizes := make([]int, 3)
	k, err := d.ReadPackets(bufs, sizes)
	if err != nil || k != 2 {
		t.Fatalf("ReadPackets = %d, %v", k, err)
	}
	if got := proto.Dst(bufs[0][:sizes[0]]); got != client {
		t.Fatalf("first packet to %v, want %v", got, client)
	}
	if !proto.ValidICMPv6Checksum(bufs[0][:sizes[0]]) {
		t.Fatal("checksum invalid after translation")
	}
	if st := g.Stats(); st.TranslatedIn != 1 || st.PassedIn != 1 || st.Malformed != 2 {
		t.Fatalf("stats %+v", st)
	}
}
