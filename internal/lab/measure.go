package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/proto"
)

// Memory is a process's resident memory, from /proc/PID/status.
type Memory struct {
	RSS     int64 // VmRSS, bytes
	PeakRSS int64 // VmHWM, bytes: the peak since start or since ResetPeakRSS
}

// Memory reads the program's current and peak resident set size.
func (p *Proc) Memory() (Memory, error) {
	pid := p.PID()
	if pid <= 0 {
		return Memory{}, fmt.Errorf("lab: %s: no pid yet", p.Name)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("lab: %s: %w", p.Name, err)
	}
	return parseMemory(string(b))
}

// parseMemory reads VmRSS and VmHWM (in kB) from a /proc/PID/status text.
func parseMemory(status string) (Memory, error) {
	var m Memory
	var seen int
	for line := range strings.Lines(status) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return Memory{}, fmt.Errorf("lab: bad %s line %q", k, strings.TrimSpace(line))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("lab: bad %s line %q: %w", k, strings.TrimSpace(line), err)
		}
		if k == "VmRSS" {
			m.RSS = n << 10
		} else {
			m.PeakRSS = n << 10
		}
		seen++
	}
	if seen != 2 {
		return Memory{}, errors.New("lab: no VmRSS and VmHWM in /proc/PID/status")
	}
	return m, nil
}

// ResetPeakRSS makes the kernel start the program's VmHWM afresh from its current
// RSS, so that a later Memory call reports the peak of what happened in between.
func (p *Proc) ResetPeakRSS() error {
	pid := p.PID()
	if pid <= 0 {
		return fmt.Errorf("lab: %s: no pid yet", p.Name)
	}
	// "5" resets the peak RSS (Documentation/filesystems/proc.rst, clear_refs).
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("lab: %s: reset peak RSS: %w", p.Name, err)
	}
	return nil
}

// AddrWatch listens to the kernel's notifications of new IPv6 addresses in one
// namespace, so a test can time when a Teredo address appears without polling.
type AddrWatch struct {
	fd   int
	host *Host
}

// WatchTeredoAddr starts watching h's namespace for IPv6 addresses being added. Start
// it before the program that adds the address; Close it when done.
func (h *Host) WatchTeredoAddr() (*AddrWatch, error) {
	w := &AddrWatch{fd: -1, host: h}
	err := inNetns(h.NS, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV6_IFADDR}); err != nil {
			unix.Close(fd)
			return err
		}
		w.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lab: watch addresses in %s: %w", h.Name, err)
	}
	return w, nil
}

// Wait returns the first Teredo address added after WatchTeredoAddr and when its
// notification was read (within microseconds of the kernel adding it), waiting up to
// timeout.
func (w *AddrWatch) Wait(timeout time.Duration) (netip.Addr, time.Time, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1<<16)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return netip.Addr{}, time.Time{}, fmt.Errorf("%w: no Teredo address added in %s within %v", ErrTimeout, w.host.Name, timeout)
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(left, 100*time.Millisecond)/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return netip.Addr{}, time.Time{}, fmt.Errorf("lab: poll netlink in %s: %w", w.host.Name, err)
		}
		n, _, err = unix.Recvfrom(w.fd, buf, unix.MSG_DONTWAIT)
		at := time.Now()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return netip.Addr{}, time.Time{}, fmt.Errorf("lab: read netlink in %s: %w", w.host.Name, err)
		}
		if a, ok := teredoAddrAdded(buf[:n]); ok {
			return a, at, nil
		}
	}
}

// teredoAddrAdded finds an RTM_NEWADDR for a Teredo address in netlink messages.
func teredoAddrAdded(b []byte) (netip.Addr, bool) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWADDR {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		for _, a := range attrs {
			if a.Attr.Type != syscall.IFA_ADDRESS && a.Attr.Type != syscall.IFA_LOCAL {
				continue
			}
			if ip, ok := netip.AddrFromSlice(a.Value); ok && proto.IsTeredo(ip) {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// Close stops watching.
func (w *AddrWatch) Close() error {
	if w.fd < 0 {
		return nil
	}
	err := unix.Close(w.fd)
	w.fd = -1
	return err
}
