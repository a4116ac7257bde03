package portmap

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// ErrNoGateway is returned when the host has no IPv4 default route.
var ErrNoGateway = errors.New("portmap: no IPv4 default gateway")

// parseProcNetRoute returns the gateway of the first IPv4 default route in
// the text of Linux's /proc/net/route (lowest metric wins). Addresses there
// are the network-order bytes printed as a host-order integer.
func parseProcNetRoute(b []byte, bigEndian bool) (netip.Addr, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 512), 4096)
	var best netip.Addr
	bestMetric := -1
	first := true
	for sc.Scan() {
		if first { // header line
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 16)
		const rtfUp, rtfGateway = 0x1, 0x2
		if err != nil || flags&(rtfUp|rtfGateway) != rtfUp|rtfGateway {
			continue
		}
		raw, err := hex.DecodeString(f[2])
		if err != nil || len(raw) != 4 {
			continue
		}
		// The kernel prints the network-order address as a host-order
		// integer: on little-endian machines the bytes come out reversed.
		if !bigEndian {
			raw[0], raw[1], raw[2], raw[3] = raw[3], raw[2], raw[1], raw[0]
		}
		gw := netip.AddrFrom4([4]byte(raw))
		metric, err := strconv.Atoi(f[6])
		if err != nil || metric < 0 {
			continue
		}
		if bestMetric < 0 || metric < bestMetric {
			best, bestMetric = gw, metric
		}
	}
	if !best.IsValid() {
		return netip.Addr{}, ErrNoGateway
	}
	return best, nil
}
