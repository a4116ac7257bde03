package portmap

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/cpu"
)

// DefaultGateway returns the IPv4 default gateway from /proc/net/route.
func DefaultGateway() (netip.Addr, error) {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: %w", err)
	}
	return parseProcNetRoute(b, cpu.IsBigEndian)
}
