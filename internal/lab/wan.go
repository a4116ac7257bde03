package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/lab/impair"
)

// WAN is a wide-area path spliced into the cable between a NAT router's "wan"
// interface and the lab internet: two TAP devices in the internet namespace, one
// bridged with the router's cable and one plugged into br0, and the test
// process moving Ethernet frames between them through an impair.Line in each
// direction. IPv4 and IPv6 frames are delayed and dropped as the profile says;
// others (ARP) pass at once, since a real wide-area path has no link layer in
// common with both ends. Every client protocol crosses it the same way, so it
// impairs a Miredo client and the project's client identically.
type WAN struct {
	// Up carries frames from the router towards the internet, Down the others.
	Up, Down *impair.Line

	files []*os.File
	wg    sync.WaitGroup
}

// ifPeerRE finds the peer's interface index in `ip -o link` output ("5: wan@if7: ...").
var ifPeerRE = regexp.MustCompile(`^(\d+): ([^:@]+)@if(\d+):`)

// ImpairWAN splices a WAN with profile p in front of client host h's NAT router,
// with random choices seeded by seed (Down uses seed+1). It is removed when t ends.
func (l *Lab) ImpairWAN(t testing.TB, h *Host, p impair.Profile, seed uint64) *WAN {
	t.Helper()
	if h.NAT == nil {
		t.Fatalf("lab: %s has no NAT router to impair", h.Name)
	}
	port, err := l.inetPort(h.NAT.Router, "wan")
	if err != nil {
		t.Fatalf("lab: impair %s: %v", h.Name, err)
	}
	w := &WAN{}
	t.Cleanup(w.close)
	// Names must be unique in the internet namespace and at most 15 bytes.
	near, far, br := "wn"+port, "wf"+port, "wb"+port
	var fNear, fFar *os.File
	err = inNetns(l.Inet.NS, func() (err error) {
		if fNear, err = openTAP(near); err != nil {
			return err
		}
		w.files = append(w.files, fNear)
		fFar, err = openTAP(far)
		if err == nil {
			w.files = append(w.files, fFar)
		}
		return err
	})
	if err != nil {
		t.Fatalf("lab: impair %s: %v", h.Name, err)
	}
	for _, args := range [][]string{
		{"link", "add", br, "type", "bridge"},
		{"link", "set", port, "nomaster"},
		{"link", "set", port, "master", br},
		// A TAP device queues 1000 frames for its reader by default; bursts
		// of a fast transfer overflowed it, a loss the profile did not ask for.
		{"link", "set", near, "master", br, "txqueuelen", "10000", "up"},
		{"link", "set", far, "master", "br0", "txqueuelen", "10000", "up"},
		{"link", "set", br, "up"},
	} {
		if err := l.Inet.ip(args...); err != nil {
			t.Fatalf("lab: impair %s: %v", h.Name, err)
		}
	}
	w.Up = impair.NewLine(clock.Real{}, p, seed, writeTo(fFar))
	w.Down = impair.NewLine(clock.Real{}, p, seed+1, writeTo(fNear))
	w.wg.Go(func() { pump(fNear, fFar, w.Up) })
	w.wg.Go(func() { pump(fFar, fNear, w.Down) })
	return w
}

// SetProfile changes both directions' profile.
func (w *WAN) SetProfile(p impair.Profile) {
	w.Up.SetProfile(p)
	w.Down.SetProfile(p)
}

func (w *WAN) close() {
	if w.Up != nil {
		w.Up.Close()
		w.Down.Close()
	}
	for _, f := range w.files {
		f.Close() // ends the pumps' reads; the TAP devices go with the last file
	}
	w.wg.Wait()
}

// inetPort returns the name of the bridge port in the internet namespace whose
// veth peer is ifname in h.
func (l *Lab) inetPort(h *Host, ifname string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := h.Run(ctx, "ip", "-o", "link", "show", "dev", ifname)
	if err != nil {
		return "", err
	}
	m := ifPeerRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s in %s is not a veth: %q", ifname, h.Name, out)
	}
	peer, _ := strconv.Atoi(m[3])
	out, err = l.Inet.Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		return "", err
	}
	for _, line := range regexp.MustCompile(`(?m)^.*$`).FindAllString(out, -1) {
		if m := ifPeerRE.FindStringSubmatch(line); m != nil && m[1] == strconv.Itoa(peer) {
			return m[2], nil
		}
	}
	return "", fmt.Errorf("no interface %d in the internet namespace", peer)
}

// openTAP creates TAP device name (no packet information header) in the calling
// thread's namespace; it exists while the file is open.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	// Non-blocking, so the runtime poller reads it and Close ends a read.
	return os.NewFile(uintptr(fd), name), nil
}

// writeTo returns a Line's output: one frame per write to f. A failed write is
// a lost frame, as on a real path: the Line's counters and TCP see it.
func writeTo(f *os.File) func([]byte) {
	return func(b []byte) { _, _ = f.Write(b) }
}

// pump reads frames from src until it is closed: IP frames go through line,
// others straight to dst.
func pump(src, dst *os.File, line *impair.Line) {
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if n < 14 {
			continue
		}
		switch binary.BigEndian.Uint16(buf[12:14]) {
		case 0x0800, 0x86dd:
			line.Send(buf[:n])
		default:
			_, _ = dst.Write(buf[:n])
		}
	}
}
