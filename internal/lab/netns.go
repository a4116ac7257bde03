package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps its named namespace handles.
const netnsDir = "/run/netns"

// inNetns runs fn on an OS thread switched into the named network namespace. Sockets
// created by fn stay in that namespace after the thread switches back, so the test
// process can talk from inside any lab host without a helper process.
func inNetns(name string, fn func() error) error {
	target, err := os.Open(filepath.Join(netnsDir, name))
	if err != nil {
		return fmt.Errorf("lab: open netns %s: %w", name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: open own netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime destroys it when this goroutine
			// ends, so no other goroutine ever runs in the wrong namespace.
			errc <- fmt.Errorf("lab: setns back from %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ListenPacket opens a packet socket (udp4, udp6, ip4:icmp, ip6:ipv6-icmp, ...) inside
// the host's namespace.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(h.NS, func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// ListenUDP opens a UDP socket bound to laddr inside the host's namespace.
func (h *Host) ListenUDP(network string, laddr *net.UDPAddr) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNetns(h.NS, func() (err error) {
		c, err = net.ListenUDP(network, laddr)
		return err
	})
	return c, err
}

// Listen opens a stream listener inside the host's namespace.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(h.NS, func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContext dials from inside the host's namespace. The address must be an IP
// literal: name resolution would run outside the namespace.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(h.NS, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
