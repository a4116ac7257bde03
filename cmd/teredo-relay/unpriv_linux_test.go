package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
)

// nobody is the unprivileged user (and group) the relay runs as.
const nobody = 65534

// TestUnprivilegedRelay checks what relay/README.md promises: root prepares
// a TUN device for an ordinary user, and teredo-relay, started as that user,
// attaches to it as it is (with or without the IFF_VNET_HDR offload), serves
// /status and reads the packets the kernel routes into the device. It runs
// as root in a network namespace of its own; the relay runs as nobody.
func TestUnprivilegedRelay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates a network namespace and a TUN device for uid 65534 (CI runs it as root)")
	}
	ipTool := requireTool(t, "ip")
	goTool := requireTool(t, "go")
	if err := unix.Access("/dev/net/tun", unix.R_OK|unix.W_OK); err != nil {
		missing(t, "/dev/net/tun: "+err.Error())
	}
	if fi, err := os.Stat("/dev/net/tun"); err == nil && fi.Mode().Perm()&0o006 != 0o006 {
		missing(t, fmt.Sprintf("/dev/net/tun is %v: an ordinary user cannot open it", fi.Mode().Perm()))
	}

	bin := buildRelay(t, goTool)
	ns := newNetns(t)
	// What an administrator does for a relay that runs as nobody.
	ns.run(t, ipTool, "link", "set", "lo", "up")
	ns.run(t, ipTool, "tuntap", "add", "dev", "t0", "mode", "tun", "user", fmt.Sprint(nobody))
	ns.run(t, ipTool, "link", "set", "dev", "t0", "mtu", "1280", "up")
	ns.run(t, ipTool, "-6", "route", "add", "2001::/32", "dev", "t0")
	// A native address for this host, the source of the packet pushed below.
	ns.run(t, ipTool, "-6", "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad")

	const status = "127.0.0.1:9545"
	r := ns.startRelay(t, bin, "-tun", "t0", "-bind", "127.0.0.1:3544", "-any-ipv4", "-status", status)
	if uid := r.uid(t); uid != fmt.Sprint(nobody) {
		t.Fatalf("the relay runs as uid %s, want %d", uid, nobody)
	}

	st := r.status(t, ns, status)
	if st.Addr != "127.0.0.1:3544" || st.Prefix != "2001::/32" {
		t.Fatalf("status %+v", st)
	}
	log := r.log()
	if !strings.Contains(log, msgAsIs) {
		t.Fatalf("the relay did not say it uses the device as it is: was it privileged after all?\n%s", log)
	}
	switch {
	case strings.Contains(log, msgNoVnetHdr):
		t.Logf("TUN offload: fell back to plain packets (no IFF_VNET_HDR) as uid %d", nobody)
	case strings.Contains(log, msgNoReadTSO):
		t.Logf("TUN offload: IFF_VNET_HDR kept for writes, TSO on reads refused, as uid %d", nobody)
	default:
		t.Logf("TUN offload: kept (IFF_VNET_HDR with GSO writes and TSO6 reads) as uid %d", nobody)
	}
	// The kernel's own word on the device, to check the relay's.
	link := ns.output(t, ipTool, "-d", "link", "show", "t0")
	if vnet := strings.Contains(link, "vnet_hdr on"); vnet == strings.Contains(log, msgNoVnetHdr) {
		t.Errorf("the kernel says vnet_hdr %v, the relay's log disagrees:\n%s\n%s", vnet, link, log)
	}
	if !strings.Contains(link, "user nobody") && !strings.Contains(link, fmt.Sprintf("user %d", nobody)) {
		t.Errorf("t0 does not belong to nobody:\n%s", link)
	}
	if ifMTU := ns.mtu(t, "t0"); ifMTU != 1280 {
		t.Errorf("t0 MTU %d, want the administrator's 1280", ifMTU)
	}

	// A datagram from this host to a Teredo address goes through the route
	// into t0; the relay reads it, does not know the peer yet, queues it
	// and bubbles the peer's server. Server and mapping are loopback
	// addresses of the namespace, so the bubble stays in it.
	peer := proto.Address{
		Server: netip.MustParseAddr("127.0.0.9"),
		Mapped: netip.MustParseAddrPort("127.0.0.1:40000"),
	}.Addr()
	for i := 0; ; i++ {
		ns.sendUDP(t, netip.MustParseAddr("2001:db8::1"), netip.AddrPortFrom(peer, 9), []byte("to a Teredo peer"))
		st = r.status(t, ns, status)
		// The indirect bubble follows the queued packet: wait for both.
		if st.Counters["tx_queued"] >= 1 && st.Counters["tx_bubbles_indirect"] >= 1 {
			break
		}
		if i == 50 {
			t.Fatalf("the relay read nothing from t0: status %+v\n%s", st, r.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("read from the prepared device: tx_queued %d, tx_bubbles_indirect %d, peers %d",
		st.Counters["tx_queued"], st.Counters["tx_bubbles_indirect"], st.Peers)
	if st.Peers != 1 || st.Counters["tx_bubbles_indirect"] < 1 {
		t.Errorf("status %+v", st)
	}

	if graceful, err := r.stop(); !graceful || err != nil {
		t.Errorf("stop: graceful %v, exit %v\n%s", graceful, err, r.log())
	}
}

// missing skips t for lack of a prerequisite, or fails it under CI=true,
// where the test must run.
func missing(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true requires this test to run", what)
	}
	t.Skipf("%s; skipping (CI=true turns this into a failure)", what)
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil && name == "go" {
		p, err = filepath.Join(runtime.GOROOT(), "bin", "go"), nil
		if _, serr := os.Stat(p); serr != nil {
			err = serr
		}
	}
	if err != nil {
		missing(t, fmt.Sprintf("no %s: %v", name, err))
	}
	return p
}

// buildRelay builds teredo-relay into a directory that other users can
// read and enter (t.TempDir's parents are private to root).
func buildRelay(t *testing.T, goTool string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "teredo-relay-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "teredo-relay")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// netns is a new, anonymous network namespace, entered by one locked OS
// thread that runs every function given to do. The thread is never
// unlocked, so the runtime ends it when the namespace is closed; the
// namespace goes away with the last thread or process in it, even if the
// test process dies.
type netns struct {
	fns chan func()
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	ns := &netns{fns: make(chan func())}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		errc <- nil
		for fn := range ns.fns {
			fn()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { close(ns.fns) })
	return ns
}

// do runs fn in the namespace: sockets it opens and processes it starts
// belong to it.
func (ns *netns) do(fn func()) {
	done := make(chan struct{})
	ns.fns <- func() {
		defer close(done)
		fn()
	}
	<-done
}

func (ns *netns) run(t *testing.T, args ...string) {
	t.Helper()
	ns.output(t, args...)
}

// output runs a command in the namespace and returns its output.
func (ns *netns) output(t *testing.T, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	ns.do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err = exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	})
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (ns *netns) mtu(t *testing.T, name string) int {
	t.Helper()
	var ifi *net.Interface
	var err error
	ns.do(func() { ifi, err = net.InterfaceByName(name) })
	if err != nil {
		t.Fatal(err)
	}
	return ifi.MTU
}

func (ns *netns) sendUDP(t *testing.T, src netip.Addr, dst netip.AddrPort, payload []byte) {
	t.Helper()
	var err error
	ns.do(func() {
		var c *net.UDPConn
		c, err = net.DialUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return
		}
		defer c.Close()
		_, err = c.Write(payload)
	})
	if err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
}

// client is an HTTP client whose connections are opened in the namespace.
func (ns *netns) client() *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				ns.do(func() {
					var d net.Dialer
					c, err = d.DialContext(ctx, network, addr)
				})
				return c, err
			},
		},
	}
}

// relayProc is a teredo-relay process running as nobody.
type relayProc struct {
	cmd     *exec.Cmd
	stderr  *os.File
	exited  chan struct{}
	waitErr error
	once    sync.Once
	err     error
	clean   bool
}

// startRelay starts bin as nobody in the namespace and waits (bounded) for
// its ready line. The relay is stopped when the test ends.
func (ns *netns) startRelay(t *testing.T, bin string, args ...string) *relayProc {
	t.Helper()
	stderr, err := os.CreateTemp(filepath.Dir(bin), "stderr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stderr.Close() })
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r := &relayProc{stderr: stderr, exited: make(chan struct{})}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Dir = filepath.Dir(bin)
	r.cmd.Stdout, r.cmd.Stderr = pw, stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}},
		// Sent when the namespace's thread, which forks the relay, ends.
		Pdeathsig: syscall.SIGKILL,
	}
	ns.do(func() { err = r.cmd.Start() })
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatalf("start relay: %v", err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() { r.stop() })

	lines := make(chan string, 1)
	go func() {
		defer pr.Close()
		br := bufio.NewReader(pr)
		line, _ := br.ReadString('\n')
		lines <- line
		io.Copy(io.Discard, br)
	}()
	want := "teredo-relay: ready on 127.0.0.1:3544, tun t0\n"
	select {
	case line := <-lines:
		if line != want {
			<-r.exited // closing stdout without the line: it is ending
			t.Fatalf("ready line %q, want %q; exit %v\n%s", line, want, r.waitErr, r.log())
		}
	case <-r.exited:
		t.Fatalf("the relay exited before it was ready: %v\n%s", r.waitErr, r.log())
	case <-time.After(10 * time.Second):
		t.Fatalf("no ready line within 10 s\n%s", r.log())
	}
	return r
}

// log returns what the relay wrote to standard error so far.
func (r *relayProc) log() string {
	b, _ := os.ReadFile(r.stderr.Name())
	return string(b)
}

// uid returns the relay's real user ID, from /proc.
func (r *relayProc) uid(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", r.cmd.Process.Pid)
	return ""
}

// status fetches /status; it fails the test if the relay is gone.
func (r *relayProc) status(t *testing.T, ns *netns, addr string) relay.Status {
	t.Helper()
	select {
	case <-r.exited:
		t.Fatalf("the relay exited: %v\n%s", r.waitErr, r.log())
	default:
	}
	resp, err := ns.client().Get("http://" + addr + "/status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, r.log())
	}
	defer resp.Body.Close()
	var st relay.Status
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

// stop sends SIGTERM and waits up to 5 s, then kills the relay; it returns
// whether the relay stopped on SIGTERM, and its exit error.
func (r *relayProc) stop() (bool, error) {
	r.once.Do(func() {
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
			r.clean = true
		case <-time.After(5 * time.Second):
			r.cmd.Process.Kill()
			<-r.exited
		}
		r.err = r.waitErr
	})
	return r.clean, r.err
}
