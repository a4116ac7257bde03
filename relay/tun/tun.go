// Package tun is a relay.Device on a Linux TUN interface: the kernel routes
// the Teredo prefix into it, and the relay reads and writes raw IPv6
// packets.
//
// Open creates the interface (or attaches to an existing one), sets its MTU
// to 1280, brings it up and routes the configured prefixes into it, which
// needs CAP_NET_ADMIN. An unprivileged relay uses a device an administrator
// made for its user, configured beforehand:
//
//	ip tuntap add dev teredo mode tun user relay
//	ip link set dev teredo mtu 1280 up
//	ip -6 route add 2001::/32 dev teredo
//
// Open then attaches to it as it is, and reports that through Configured.
//
// The device is opened with IFF_VNET_HDR where the kernel has it (unless
// Config.DisableOffload): every packet then carries a virtio_net_hdr, and
// WritePackets merges consecutive TCP segments of a flow into one
// super-segment of up to 64 KiB that the kernel segments again (GSO), as
// wireguard-go does, so that its forwarding path runs once per
// super-segment. Reads ask for TCP segmentation offload (TSO6) and checksum
// offload: the kernel hands over TCP super-packets of up to 64 KiB, which
// ReadPackets splits into segments of at most the MTU with their checksums,
// as the kernel would have, so that it runs its stack once per super-packet
// and the device reads once per super-packet instead of once per segment.
package tun

import (
	"errors"
	"net/netip"
)

// DefaultName is the interface name the relay uses by default.
const DefaultName = "teredo"

// ErrUnsupported is returned by Open on systems other than Linux.
var ErrUnsupported = errors.New("tun: TUN devices are supported on Linux only")

// Config configures Open.
type Config struct {
	// Name is the interface name; empty means DefaultName.
	Name string
	// MTU is the interface MTU; zero means 1280.
	MTU int
	// Routes are the prefixes routed into the interface, usually the Teredo
	// prefix 2001::/32 (for a relay) or nothing (when the operator routes
	// it).
	Routes []netip.Prefix
	// DisableOffload opens the device without virtio_net_hdr, so that
	// WritePackets writes each packet on its own, as on kernels without
	// IFF_VNET_HDR.
	DisableOffload bool
}

// Stats counts what a Device did since Open.
type Stats struct {
	// Offload reports whether the device exchanges packets with a
	// virtio_net_hdr, which lets WritePackets coalesce TCP segments.
	Offload bool
	// Packets and Writes count the packets written and the writes they took.
	Packets, Writes uint64
	// Coalesced counts the packets written as part of a TCP super-segment.
	Coalesced uint64
	// BadChecksum counts TCP segments written on their own because their
	// checksum was wrong: the kernel would have recomputed it for a
	// super-segment.
	BadChecksum uint64
	// GSOFallbacks counts super-segments the kernel refused; their segments
	// were then written one by one (as udpio.Stats.GSOFallbacks).
	GSOFallbacks uint64
	// WriteErrors counts failed writes; ReadDrops packets read that could
	// not be handed over: an offload the device never asked for, an
	// inconsistent virtio_net_hdr, a packet longer than the caller's
	// buffer.
	WriteErrors, ReadDrops uint64

	// ReadOffload reports whether reads may return TCP super-packets
	// (TUN_F_TSO6) that the device splits into segments itself; false
	// with Offload means the kernel refused and segments before the
	// device, as without Offload.
	ReadOffload bool
	// ReadSuper counts the TCP super-packets read, and ReadSegments the
	// packets split from them.
	ReadSuper, ReadSegments uint64
}

// Counters returns the cumulative counters of s by snake_case name, for
// status pages; the Offload and ReadOffload modes are not counters and are
// left out.
func (s Stats) Counters() map[string]uint64 {
	return map[string]uint64{
		"packets_written": s.Packets, "writes": s.Writes, "coalesced": s.Coalesced,
		"bad_checksum": s.BadChecksum, "gso_fallbacks": s.GSOFallbacks,
		"write_errors": s.WriteErrors, "read_drops": s.ReadDrops,
		"read_super": s.ReadSuper, "read_segments": s.ReadSegments,
	}
}

// DeviceCounters implements relay.CountingDevice.
func (d *Device) DeviceCounters() map[string]uint64 { return d.Stats().Counters() }
