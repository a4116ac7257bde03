package tun

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/teredo-go/teredo/proto"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Device is an open TUN interface. It is safe for concurrent use.
type Device struct {
	f          *os.File
	rc         syscall.RawConn
	name       string
	index      int
	configured bool
	vnet       bool // packets carry a virtio_net_hdr
	tso        bool // reads may be TCP super-packets
	closed     atomic.Bool

	batchMu sync.Mutex // one read at a time: it owns batch and one
	batch   batchRead
	one     struct {
		bufs  [1][]byte
		sizes [1]int
	}

	writeMu sync.Mutex // owns co
	co      *coalescer

	stats counters
}

// batchRead is the state of one read call, kept in the Device so that the
// callback handed to the runtime poller is bound once and a batch allocates
// nothing.
type batchRead struct {
	bufs  [][]byte
	sizes []int
	n     int
	err   error
	fn    func(fd uintptr) bool
	// split, with a virtio_net_hdr, reads each packet into its own buffer
	// (a super-packet is bigger than the caller's) and keeps what did not
	// fit one batch for the next.
	split *splitter
}

// read reads packets from fd without blocking until bufs are full or the
// queue is empty; it returns false (wait for readability) only if it got none.
func (b *batchRead) read(fd uintptr) bool {
	for b.n < len(b.bufs) {
		if b.split != nil && b.split.pending() {
			if n := b.split.next(b.bufs[b.n]); n > 0 {
				b.sizes[b.n] = n
				b.n++
			}
			continue
		}
		dst := b.bufs[b.n]
		if b.split != nil {
			dst = b.split.buf
		}
		n, err := unix.Read(int(fd), dst)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return b.n > 0
		}
		if err != nil {
			b.err = err
			return true
		}
		if b.split != nil {
			b.split.load(dst[:n])
			continue
		}
		b.sizes[b.n] = n
		b.n++
	}
	return true
}

// Open opens the TUN interface described by cfg. If the interface cannot be
// configured for lack of privilege, Open still succeeds when the device
// itself could be attached (a device created for this user), leaving its
// configuration as it is; Configured then reports false and Warning says
// what was skipped.
func Open(cfg Config) (*Device, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.MTU == 0 {
		cfg.MTU = proto.MinMTU
	}
	if len(cfg.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tun: interface name %q too long", cfg.Name)
	}
	fd, ifr, vnet, tso, err := attach(cfg)
	if err != nil {
		return nil, err
	}
	d := &Device{f: os.NewFile(uintptr(fd), "/dev/net/tun"), name: ifr.Name(), vnet: vnet, tso: tso}
	if d.rc, err = d.f.SyscallConn(); err != nil {
		d.f.Close()
		return nil, fmt.Errorf("tun: %w", err)
	}
	d.batch.fn = d.batch.read
	ifi, err := net.InterfaceByName(d.name)
	if err != nil {
		d.f.Close()
		return nil, fmt.Errorf("tun: %w", err)
	}
	d.index = ifi.Index
	mtu := cfg.MTU
	switch err := d.configure(cfg); {
	case err == nil:
		d.configured = true
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		// An unprivileged relay on a device prepared by the administrator.
		if ifi.Flags&net.FlagUp == 0 {
			d.f.Close()
			return nil, fmt.Errorf("tun: %s is down and cannot be configured without CAP_NET_ADMIN: %w", d.name, err)
		}
		mtu = ifi.MTU
	default:
		d.f.Close()
		return nil, err
	}
	if vnet {
		d.co = newCoalescer(d.write, &d.stats)
		d.batch.split = newSplitter(mtu, &d.stats)
	}
	return d, nil
}

// readOffload is the offload reads ask for: the kernel may hand over TCP/IPv6
// super-packets, and leave checksums to the device. Nothing else (TSO4, ECN,
// UFO, USO) is advertised, so that no other kind of super-packet arrives.
const readOffload = unix.TUN_F_CSUM | unix.TUN_F_TSO6

// attach opens /dev/net/tun and attaches it to the interface, with a
// virtio_net_hdr on every packet unless the kernel cannot or cfg says not
// to; tso reports whether reads may return TCP super-packets.
func attach(cfg Config) (fd int, ifr *unix.Ifreq, vnet, tso bool, err error) {
	vnet = !cfg.DisableOffload
	for {
		fd, ifr, vnet, err = attachFlags(cfg.Name, vnet)
		if err != nil || !vnet {
			return fd, ifr, vnet, false, err
		}
		// A device an administrator made persistent keeps another header
		// size. Without read offload the kernel hands over complete
		// packets, and only writes use GSO.
		err = unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen)
		if err == nil {
			if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, readOffload) == nil {
				return fd, ifr, vnet, true, nil
			}
			err = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0)
		}
		if err == nil {
			return fd, ifr, vnet, false, nil
		}
		unix.Close(fd)
		vnet = false
	}
}

func attachFlags(name string, vnet bool) (int, *unix.Ifreq, bool, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, nil, false, fmt.Errorf("tun: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, nil, false, fmt.Errorf("tun: %w", err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnet {
		if f, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES); err != nil || f&unix.IFF_VNET_HDR == 0 {
			vnet = false
		} else {
			flags |= unix.IFF_VNET_HDR
		}
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return -1, nil, false, fmt.Errorf("tun: attach %s: %w (create it for this user first: ip tuntap add dev %s mode tun user $USER)", name, err, name)
		}
		return -1, nil, false, fmt.Errorf("tun: attach %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, nil, false, fmt.Errorf("tun: %w", err)
	}
	return fd, ifr, vnet, nil
}

// configure sets the MTU, brings the link up and adds the routes.
func (d *Device) configure(cfg Config) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tun: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return err
	}
	ifr.SetUint32(uint32(cfg.MTU))
	if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("tun: set MTU of %s: %w", d.name, err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tun: flags of %s: %w", d.name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tun: bring %s up: %w", d.name, err)
	}
	for _, p := range cfg.Routes {
		if err := addRoute(d.index, p); err != nil {
			return fmt.Errorf("tun: route %v into %s: %w", p, d.name, err)
		}
	}
	return nil
}

// addRoute adds (or replaces) a route for the IPv6 prefix p through the
// interface index with an rtnetlink request.
func addRoute(index int, p netip.Prefix) error {
	if !p.Addr().Is6() {
		return fmt.Errorf("not an IPv6 prefix")
	}
	p = p.Masked()
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	dst := p.Addr().As16()
	msg := make([]byte, 0, 64)
	msg = binary.NativeEndian.AppendUint32(msg, 0) // length, set below
	msg = binary.NativeEndian.AppendUint16(msg, unix.RTM_NEWROUTE)
	msg = binary.NativeEndian.AppendUint16(msg, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	msg = binary.NativeEndian.AppendUint32(msg, 1) // sequence
	msg = binary.NativeEndian.AppendUint32(msg, 0) // port id
	msg = append(msg,
		unix.AF_INET6, byte(p.Bits()), 0, 0, // family, dst_len, src_len, tos
		unix.RT_TABLE_MAIN, unix.RTPROT_STATIC, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST)
	msg = binary.NativeEndian.AppendUint32(msg, 0) // flags
	msg = appendAttr(msg, unix.RTA_DST, dst[:])
	var oif [4]byte
	binary.NativeEndian.PutUint32(oif[:], uint32(index))
	msg = appendAttr(msg, unix.RTA_OIF, oif[:])
	binary.NativeEndian.PutUint32(msg[0:4], uint32(len(msg)))
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.NLMSG_HDRLEN+4 {
		return fmt.Errorf("short netlink answer")
	}
	if typ := binary.NativeEndian.Uint16(buf[4:6]); typ != unix.NLMSG_ERROR {
		return fmt.Errorf("unexpected netlink answer type %d", typ)
	}
	if code := int32(binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN:])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// Name returns the interface name, as the kernel chose it.
func (d *Device) Name() string { return d.name }

// Index returns the interface index.
func (d *Device) Index() int { return d.index }

// Configured reports whether Open set the MTU, the link state and the
// routes itself; false means the device was used as its owner left it.
func (d *Device) Configured() bool { return d.configured }

// ReadPacket implements relay.Device. With offload on, the device reads into
// its own buffer, and a packet longer than b is dropped and counted in
// ReadDrops.
func (d *Device) ReadPacket(b []byte) (int, error) {
	d.batchMu.Lock()
	defer d.batchMu.Unlock()
	d.one.bufs[0] = b
	_, err := d.readBatch(d.one.bufs[:], d.one.sizes[:])
	d.one.bufs[0] = nil
	if err != nil {
		return 0, err
	}
	return d.one.sizes[0], nil
}

// ReadPackets implements relay.BatchDevice: it blocks until a packet is
// queued, then reads it and those queued behind it, up to len(bufs), in one
// wake-up. It stores packet i in bufs[i] and its length in sizes[i], and
// returns the number of packets read. With read offload, the segments of a
// TCP super-packet the kernel handed over count as packets; those that do
// not fit in bufs are returned first by the next call.
func (d *Device) ReadPackets(bufs [][]byte, sizes []int) (int, error) {
	if len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tun: read %s: %d sizes for %d buffers", d.name, len(sizes), len(bufs))
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	d.batchMu.Lock()
	defer d.batchMu.Unlock()
	return d.readBatch(bufs, sizes)
}

// readBatch reads into bufs; d.batchMu must be held.
func (d *Device) readBatch(bufs [][]byte, sizes []int) (int, error) {
	b := &d.batch
	b.bufs, b.sizes, b.n, b.err = bufs, sizes, 0, nil
	err := d.rc.Read(b.fn)
	n := b.n
	if err == nil && n == 0 {
		err = b.err
	}
	b.bufs, b.sizes = nil, nil
	if err != nil {
		if d.closed.Load() || errors.Is(err, os.ErrClosed) {
			// The poller reports a closed file with its own error value.
			return 0, fmt.Errorf("tun: read %s: %w", d.name, net.ErrClosed)
		}
		return 0, fmt.Errorf("tun: read %s: %w", d.name, err)
	}
	return n, nil
}

// WritePacket implements relay.Device.
func (d *Device) WritePacket(p []byte) error {
	if !d.vnet {
		return d.write(p, 1)
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	return d.co.writeOne(p)
}

// WritePackets implements relay.BatchWriter: it writes pkts in order, and
// with offload on merges consecutive TCP segments of a flow (ACK or ACK|PSH,
// with verified checksums, no extension headers) into super-segments of up
// to 64 KiB that the kernel splits again (GSO), at most MaxSegments per
// write. Each flow's packets keep their order; packets of different flows
// may be reordered. It returns how many packets were written: a failed write
// drops its own packets and the others still go, and err is the first
// failure. It keeps no reference to pkts.
func (d *Device) WritePackets(pkts [][]byte) (int, error) {
	if !d.vnet {
		n := 0
		var first error
		for _, p := range pkts {
			if err := d.write(p, 1); err != nil {
				first = cmp.Or(first, err)
				continue
			}
			n++
		}
		return n, first
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	return d.co.coalesce(pkts)
}

// write writes b, which carries segs packets, as is.
func (d *Device) write(b []byte, segs int) error {
	_, err := d.f.Write(b)
	if !d.vnet {
		// The coalescer counts the writes it makes.
		d.stats.writes.Add(1)
		if err == nil {
			d.stats.packets.Add(1)
		} else {
			d.stats.writeErrors.Add(1)
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("tun: write %s: %w", d.name, net.ErrClosed)
		}
		return fmt.Errorf("tun: write %s: %w", d.name, err)
	}
	return nil
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	s := d.stats.load()
	s.Offload, s.ReadOffload = d.vnet, d.tso
	return s
}

// Close closes the device; a device Open created disappears with its
// routes.
func (d *Device) Close() error {
	d.closed.Store(true)
	return d.f.Close()
}
