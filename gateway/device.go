package gateway

import (
	"errors"

	"github.com/teredo-go/teredo/nptv6"
	"github.com/teredo-go/teredo/relay"
)

// device is the relay's IPv6 side seen through the prefix translator:
// packets from clients leave with their public source, and packets to the
// public prefix arrive addressed to the clients' Teredo addresses. It
// keeps the batch interfaces of the device it wraps, on which the relay's
// throughput depends.
type device struct {
	dev relay.Device
	g   *Gateway
}

var (
	_ relay.BatchDevice    = (*device)(nil)
	_ relay.BatchWriter    = (*device)(nil)
	_ relay.CountingDevice = (*device)(nil)
)

// errForeign refuses a packet from a Teredo client of another server: its
// address has no public counterpart, and replies to it would not come
// back here.
var errForeign = errors.New("gateway: source is not a client of this gateway")

// inbound translates a packet read from the device. Packets outside the
// public prefix pass unchanged (the relay decides about them); malformed
// ones report false.
func (d *device) inbound(pkt []byte) bool {
	switch err := d.g.nat.Inbound(pkt); {
	case err == nil:
		d.g.ctr.translatedIn.Add(1)
	case errors.Is(err, nptv6.ErrNotMapped):
		d.g.ctr.passedIn.Add(1)
	default:
		d.g.ctr.malformed.Add(1)
		return false
	}
	return true
}

func (d *device) outbound(pkt []byte) error {
	switch err := d.g.nat.Outbound(pkt); {
	case err == nil:
		d.g.ctr.translatedOut.Add(1)
		return nil
	case errors.Is(err, nptv6.ErrNotMapped):
		d.g.ctr.foreignSource.Add(1)
		return errForeign
	default:
		d.g.ctr.malformed.Add(1)
		return err
	}
}

func (d *device) ReadPacket(b []byte) (int, error) {
	for {
		n, err := d.dev.ReadPacket(b)
		if err != nil || d.inbound(b[:n]) {
			return n, err
		}
	}
}

func (d *device) ReadPackets(bufs [][]byte, sizes []int) (int, error) {
	bd, ok := d.dev.(relay.BatchDevice)
	if !ok {
		n, err := d.ReadPacket(bufs[0])
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		return 1, nil
	}
	for {
		n, err := bd.ReadPackets(bufs, sizes)
		if err != nil {
			return 0, err
		}
		k := 0
		for i := range n {
			if !d.inbound(bufs[i][:sizes[i]]) {
				continue
			}
			if k != i {
				bufs[k], bufs[i] = bufs[i], bufs[k]
				sizes[k] = sizes[i]
			}
			k++
		}
		if k > 0 {
			return k, nil
		}
	}
}

func (d *device) WritePacket(pkt []byte) error {
	if err := d.outbound(pkt); err != nil {
		return err
	}
	return d.dev.WritePacket(pkt)
}

func (d *device) WritePackets(pkts [][]byte) (int, error) {
	// Refused packets are dropped and counted; the rest keep their order.
	var first error
	k := 0
	for i, p := range pkts {
		if err := d.outbound(p); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		pkts[k] = pkts[i]
		k++
	}
	bw, ok := d.dev.(relay.BatchWriter)
	if !ok {
		n := 0
		for _, p := range pkts[:k] {
			if err := d.dev.WritePacket(p); err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			n++
		}
		return n, first
	}
	n, err := bw.WritePackets(pkts[:k])
	if err == nil {
		err = first
	}
	return n, err
}

func (d *device) DeviceCounters() map[string]uint64 {
	if c, ok := d.dev.(relay.CountingDevice); ok {
		return c.DeviceCounters()
	}
	return nil
}

func (d *device) Close() error { return d.dev.Close() }
