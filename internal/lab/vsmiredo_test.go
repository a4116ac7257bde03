package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkLabVsMiredo compares the project's client and relay with Miredo's in one
// lab, with the project's teredo-server for both: client A is teredo-socks behind a
// home router using teredo-relay, client B is a Miredo client behind another home
// router using a Miredo relay on a second relay host. The IPv6-only host routes each
// client's /128 to its own relay and serves both from the same in-process HTTP
// servers. Measurements alternate A B A B so that drift of the shared machine
// cancels, and the table gives medians:
//
//   - qualification: process start to teredo-socks's "qualified" line, and to the
//     kernel's notification (netlink, no polling) that Miredo's 2001:0: address was
//     added;
//   - download and upload of LAB_BENCH_MB (default 100) MiB over one HTTP connection,
//     curl --socks5-hostname through teredo-socks for A, plain curl over Miredo's TUN
//     for B, checksums verified (uploads by the server);
//   - peak RSS (VmHWM, reset before each transfer) of teredo-socks and teredo-relay;
//   - VmRSS of teredo-socks with 1000 idle SOCKS CONNECT sessions to a TCP server on
//     the IPv6-only host.
//
// LAB_BENCH_ROUNDS (default 3) sets the rounds. With LAB_PERF_DIR set, an extra,
// unmeasured download runs under `perf record -g` on teredo-socks and teredo-relay and
// the reports go to that directory. Run as root:
//
//	go test -run XXX -bench LabVsMiredo -benchtime 1x ./lab
func BenchmarkLabVsMiredo(b *testing.B) {
	requireOurServer(b)
	requireOurSocks(b)
	requireOurRelay(b)
	Require(b, "miredo", "curl", "ss")
	rounds := envInt(b, "LAB_BENCH_ROUNDS", 3)
	size := int64(envInt(b, "LAB_BENCH_MB", 100)) << 20

	l := New(b, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}})
	srv := StartTeredoServer(b, l.Server, BuildCommand(b, "./"+ourServerDir))
	relay := startOurRelay(b, l.Relay)
	theirRelay := startSecondMiredoRelay(b, l)
	f := l.V6Host.ServeFile(b, netip.AddrPortFrom(V6HostAddr, 8080), size)
	up := l.V6Host.ServeUpload(b, netip.AddrPortFrom(V6HostAddr, 8081))
	upFile := filepath.Join(b.TempDir(), "upload.bin")
	upWant, err := WriteFile(upFile, size)
	if err != nil {
		b.Fatal(err)
	}
	a, bh := l.Clients["a1"], l.Clients["a2"]
	rtt := pingRTT(b, a, ServerPrimary)

	var r vsResults
	var socks *socksProc
	var miredo *MiredoClient
	for i := range rounds {
		last := i == rounds-1
		socks = startSocks(b, a, srv.Primary)
		r.qualify[0] = append(r.qualify[0], socks.Qualified)
		r.socksStarted = append(r.socksStarted, socks.Started)
		r.echoStarted = append(r.echoStarted, startEcho(b, a))
		if !last {
			socks.Proc.Stop(stopGrace)
		}
		var q time.Duration
		miredo, q = startMiredoTimed(b, bh, srv.Primary)
		r.qualify[1] = append(r.qualify[1], q)
		if !last {
			miredo.Proc.Stop(stopGrace)
		}
	}
	routeVia(b, l.V6Host, socks.Addr, RelayV6)
	routeVia(b, l.V6Host, miredo.Addr, secondRelayV6)
	socksArgs := []string{"--socks5-hostname", socksListen}
	// Warm up: both clients find their relay (echo test) before anything is timed.
	warm := l.V6Host.ServeFile(b, netip.AddrPortFrom(V6HostAddr, 8090), 1<<20)
	for _, w := range []struct {
		h     *Host
		extra []string
	}{{a, socksArgs}, {bh, nil}} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		got, err := w.h.Curl(ctx, warm.URL, append([]string{"--retry", "3", "--retry-all-errors"}, w.extra...)...)
		cancel()
		if err == nil {
			err = warm.Verify(got)
		}
		if err != nil {
			b.Fatalf("warm-up on %s: %v", w.h.Name, err)
		}
	}

	ours := []*Proc{socks.Proc, relay.Proc}
	download := func(h *Host, extra []string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			got, err := h.Curl(ctx, f.URL, extra...)
			if err == nil {
				err = f.Verify(got)
			}
			return err
		}
	}
	upload := func(h *Host, extra []string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			got, err := h.CurlUpload(ctx, up.URL, upFile, extra...)
			if err == nil && got != upWant {
				err = fmt.Errorf("%w: the server received %d bytes sha256 %s, want %d bytes sha256 %s", ErrDigest, got.Size, got.SHA256, upWant.Size, upWant.SHA256)
			}
			return err
		}
	}
	// The CPU time of each side's Teredo processes (client and relay; not curl,
	// not the HTTP servers) per transfer. The kernel charges the NAT's and the
	// bridge's forwarding of a datagram largely to the process that sent it, the
	// same way for both sides.
	cpu := [2]func() time.Duration{
		func() time.Duration { return cpuTime(b, a, "teredo-socks") + cpuTime(b, relay.Host, "teredo-relay") },
		func() time.Duration { return cpuTime(b, bh, "miredo") + cpuTime(b, theirRelay.Host, "miredo") },
	}
	// Datagrams dropped at full socket buffers (UDP InErrors) show where loss
	// came from.
	drops := []*Host{a, relay.Host, bh, theirRelay.Host}
	dropsBefore := udpInErrors(b, drops)
	for range rounds {
		for _, dir := range []struct {
			do   func(h *Host, extra []string) func(ctx context.Context) error
			rate *[2][]float64
			cpu  *[2][]time.Duration
			own  *[]time.Duration // teredo-socks alone
			peak *[][2]int64
		}{{download, &r.down, &r.cpuDown, &r.socksCPUDown, &r.peakDown}, {upload, &r.up, &r.cpuUp, &r.socksCPUUp, &r.peakUp}} {
			for side, h := range []*Host{a, bh} {
				var extra []string
				if side == 0 {
					extra = socksArgs
				}
				resetPeaks(b, ours, side == 0)
				c0, s0 := cpu[side](), cpuTime(b, a, "teredo-socks")
				d := timed(b, dir.do(h, extra))
				dir.cpu[side] = append(dir.cpu[side], cpu[side]()-c0)
				if side == 0 {
					*dir.own = append(*dir.own, cpuTime(b, a, "teredo-socks")-s0)
				}
				dir.rate[side] = append(dir.rate[side], mbps(size, d))
				if side == 0 {
					*dir.peak = append(*dir.peak, peaks(b, ours))
				}
			}
		}
	}
	dropsAfter := udpInErrors(b, drops)
	for i, h := range drops {
		r.drops = append(r.drops, fmt.Sprintf("%s %d", h.Name, dropsAfter[i]-dropsBefore[i]))
	}
	if dir := os.Getenv("LAB_PERF_DIR"); dir != "" {
		procs := map[string]*Proc{"teredo-socks": socks.Proc, "teredo-relay": relay.Proc}
		profile(b, dir, "download", procs, download(a, socksArgs))
		profile(b, dir, "upload", procs, upload(a, socksArgs))
	}
	idle, base, opened := idleSessions(b, l.V6Host, socks, 1000)

	r.print(b, rtt, size, idle, base, opened)
	b.ReportMetric(median(r.down[0]), "ours-down-MB/s")
	b.ReportMetric(median(r.down[1]), "miredo-down-MB/s")
	b.ReportMetric(median(r.up[0]), "ours-up-MB/s")
	b.ReportMetric(median(r.up[1]), "miredo-up-MB/s")
	b.ReportMetric(ms(medianDur(r.qualify[0])), "ours-qualify-ms")
	b.ReportMetric(ms(medianDur(r.qualify[1])), "miredo-qualify-ms")
	b.ReportMetric(float64(idle.RSS)/1e6, "idle1000-RSS-MB")
	b.ReportMetric(medianDur(r.socksCPUDown).Seconds(), "ours-socks-cpu-down-s")
	b.ReportMetric(medianDur(r.socksCPUUp).Seconds(), "ours-socks-cpu-up-s")
}

// vsResults are the per-round measurements; index 0 is ours, 1 Miredo's.
type vsResults struct {
	qualify          [2][]time.Duration
	socksStarted     []time.Duration // to teredo-socks's first line
	echoStarted      []time.Duration // to /bin/echo's line: Host.Start's own cost
	down, up         [2][]float64    // MB/s
	cpuDown, cpuUp   [2][]time.Duration
	socksCPUDown     []time.Duration // teredo-socks's share of cpuDown[0]
	socksCPUUp       []time.Duration
	peakDown, peakUp [][2]int64 // peak RSS of teredo-socks and teredo-relay
	drops            []string   // UDP InErrors per namespace during the transfers
}

func (r *vsResults) print(b *testing.B, rtt time.Duration, size int64, idle, base Memory, opened time.Duration) {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("\n%d rounds, A B A B; %d MiB per transfer; RTT client→server %v; %s\n", len(r.down[0]), size>>20, rtt.Round(time.Microsecond), kernelAndCPUs())
	w("| metric (median) | ours | Miredo | ours/Miredo | rounds (ours; Miredo) |\n|---|---|---|---|---|\n")
	w("| download MB/s | %.1f | %.1f | %.2f | %s; %s |\n", median(r.down[0]), median(r.down[1]), median(r.down[0])/median(r.down[1]), floats(r.down[0]), floats(r.down[1]))
	w("| upload MB/s | %.1f | %.1f | %.2f | %s; %s |\n", median(r.up[0]), median(r.up[1]), median(r.up[0])/median(r.up[1]), floats(r.up[0]), floats(r.up[1]))
	ca, cb := medianDur(r.cpuDown[0]), medianDur(r.cpuDown[1])
	w("| CPU s per download (client + relay processes) | %.2f | %.2f | %.2f | %s; %s |\n", ca.Seconds(), cb.Seconds(), ca.Seconds()/cb.Seconds(), secs(r.cpuDown[0]), secs(r.cpuDown[1]))
	w("| of which teredo-socks, CPU s per download | %.2f | | | %s |\n", medianDur(r.socksCPUDown).Seconds(), secs(r.socksCPUDown))
	ca, cb = medianDur(r.cpuUp[0]), medianDur(r.cpuUp[1])
	w("| CPU s per upload (client + relay processes) | %.2f | %.2f | %.2f | %s; %s |\n", ca.Seconds(), cb.Seconds(), ca.Seconds()/cb.Seconds(), secs(r.cpuUp[0]), secs(r.cpuUp[1]))
	w("| of which teredo-socks, CPU s per upload | %.2f | | | %s |\n", medianDur(r.socksCPUUp).Seconds(), secs(r.socksCPUUp))
	qa, qb := medianDur(r.qualify[0]), medianDur(r.qualify[1])
	w("| qualification ms | %.1f | %.1f | %.2f | %s; %s |\n", ms(qa), ms(qb), ms(qa)/ms(qb), durs(r.qualify[0]), durs(r.qualify[1]))
	w("| of which process start to teredo-socks's first line, ms | %.1f | | | %s |\n", ms(medianDur(r.socksStarted)), durs(r.socksStarted))
	w("| (for scale: process start to /bin/echo's line, ms) | %.1f | | | %s |\n", ms(medianDur(r.echoStarted)), durs(r.echoStarted))
	w("| peak RSS during download MB (teredo-socks + teredo-relay) | %s | | | |\n", peakCell(r.peakDown))
	w("| peak RSS during upload MB (teredo-socks + teredo-relay) | %s | | | |\n", peakCell(r.peakUp))
	w("| teredo-socks RSS MB, 1000 idle SOCKS sessions (before: %.1f; opened in %v) | %.1f | | | |\n", float64(base.RSS)/1e6, opened.Round(time.Millisecond), float64(idle.RSS)/1e6)
	w("UDP datagrams dropped at receive (InErrors) during the transfers: %s\n", strings.Join(r.drops, ", "))
	// Straight to standard output: the testing package truncates long
	// benchmark logs.
	fmt.Print(sb.String())
}

func peakCell(p [][2]int64) string {
	var s, rl []float64
	for _, v := range p {
		s = append(s, float64(v[0])/1e6)
		rl = append(rl, float64(v[1])/1e6)
	}
	return fmt.Sprintf("%.1f + %.1f (max %.1f + %.1f)", median(s), median(rl), slices.Max(s), slices.Max(rl))
}

// startMiredoTimed starts a Miredo client on h and returns it with the time from its
// start to the kernel adding its Teredo address.
func startMiredoTimed(b *testing.B, h *Host, server netip.Addr) (*MiredoClient, time.Duration) {
	w, err := h.WatchTeredoAddr()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	type added struct {
		addr netip.Addr
		at   time.Time
		err  error
	}
	ch := make(chan added, 1)
	go func() {
		a, at, err := w.Wait(DefaultQualifyTimeout + 5*time.Second)
		ch <- added{a, at, err}
	}()
	m := StartMiredoClient(b, h, server, MiredoClientOptions{})
	got := <-ch
	if got.err != nil {
		b.Fatal(got.err)
	}
	if got.addr != m.Addr {
		b.Fatalf("netlink saw %v added, the interface has %v", got.addr, m.Addr)
	}
	return m, got.at.Sub(m.Started)
}

// pingRTT returns the median of five ping round trips from h to dst.
func pingRTT(b *testing.B, h *Host, dst netip.Addr) time.Duration {
	var rtts []time.Duration
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rtt, err := h.Ping(ctx, dst, 0)
		cancel()
		if err != nil {
			b.Fatalf("ping %v from %s: %v", dst, h.Name, err)
		}
		rtts = append(rtts, rtt)
	}
	return medianDur(rtts)
}

// timed runs one transfer, bounded to five minutes, and fails b if it fails.
func timed(b *testing.B, f func(ctx context.Context) error) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := f(ctx); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func resetPeaks(b *testing.B, ps []*Proc, do bool) {
	if !do {
		return
	}
	for _, p := range ps {
		if err := p.ResetPeakRSS(); err != nil {
			b.Fatal(err)
		}
	}
}

func peaks(b *testing.B, ps []*Proc) [2]int64 {
	var out [2]int64
	for i, p := range ps[:2] {
		m, err := p.Memory()
		if err != nil {
			b.Fatal(err)
		}
		out[i] = m.PeakRSS
	}
	return out
}

// idleSessions opens n SOCKS CONNECT sessions through s to a TCP server on v6 that
// holds them open, and returns teredo-socks's memory with them established, its
// memory before, and how long opening them took.
func idleSessions(b *testing.B, v6 *Host, s *socksProc, n int) (with, before Memory, took time.Duration) {
	ln, err := v6.Listen("tcp6", netip.AddrPortFrom(V6HostAddr, 9001).String())
	if err != nil {
		b.Fatal(err)
	}
	var held sync.WaitGroup
	var accepted atomic.Int64
	var mu sync.Mutex
	var serverConns []net.Conn
	held.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			serverConns = append(serverConns, c)
			mu.Unlock()
		}
	})
	var clientConns []net.Conn
	defer func() {
		ln.Close()
		held.Wait()
		for _, c := range append(clientConns, serverConns...) {
			c.Close()
		}
	}()
	time.Sleep(time.Second) // let the last transfer's buffers go
	if before, err = s.Proc.Memory(); err != nil {
		b.Fatal(err)
	}
	dst := netip.AddrPortFrom(V6HostAddr, 9001)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	conns := make(chan net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 32 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, err := socksConnect(ctx, s.Host, socksListen, dst)
				if err != nil {
					errs <- err
					return
				}
				conns <- c
			}
		})
	}
	wg.Wait()
	close(conns)
	close(errs)
	for c := range conns {
		clientConns = append(clientConns, c)
	}
	if err := <-errs; err != nil {
		b.Fatalf("after %d sessions: %v", len(clientConns), err)
	}
	for accepted.Load() < int64(n) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	took = time.Since(start)
	if got := accepted.Load(); got != int64(n) {
		b.Fatalf("the server accepted %d of %d sessions", got, n)
	}
	time.Sleep(2 * time.Second) // idle
	if with, err = s.Proc.Memory(); err != nil {
		b.Fatal(err)
	}
	return with, before, took
}

// profile runs one more transfer with `perf record -g` attached to each process and
// writes perf.data and flat and cumulative reports per process into dir, named after
// the process and what.
func profile(b *testing.B, dir, what string, procs map[string]*Proc, transfer func(ctx context.Context) error) {
	perf, err := LookTool("perf")
	if err != nil {
		b.Logf("LAB_PERF_DIR: %v", err)
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	var recs []*exec.Cmd
	for name, p := range procs {
		cmd := exec.Command(perf, "record", "-g", "-F", "1999", "-p", strconv.Itoa(p.PID()), "-o", filepath.Join(dir, name+"-"+what+".perf.data"))
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		recs = append(recs, cmd)
	}
	time.Sleep(500 * time.Millisecond) // perf attaches
	timed(b, transfer)
	for _, cmd := range recs {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
	}
	for name := range procs {
		base := filepath.Join(dir, name+"-"+what)
		// Flat (self time) and cumulative (with callees) views.
		for _, v := range []struct{ suffix, children string }{{".txt", "--no-children"}, {".cum.txt", "--children"}} {
			out, err := exec.Command(perf, "report", "-i", base+".perf.data", "--stdio", v.children, "--percent-limit", "1", "-g", "none", "--sort", "dso,symbol").Output()
			if err != nil {
				b.Logf("perf report %s: %v", base, err)
				continue
			}
			if err := os.WriteFile(base+v.suffix, out, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		fmt.Printf("perf profile of %s during a %s: %s.txt (self) and .cum.txt (with callees)\n", name, what, base)
	}
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func kernelAndCPUs() string {
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("kernel %s, %d CPUs", strings.TrimSpace(string(rel)), runtime.NumCPU())
}

func mbps(size int64, d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(v []time.Duration) time.Duration {
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = float64(d)
	}
	return time.Duration(median(f))
}

func floats(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.1f", x))
	}
	return strings.Join(s, " ")
}

func durs(v []time.Duration) string {
	var s []string
	for _, d := range v {
		s = append(s, fmt.Sprintf("%.1f", ms(d)))
	}
	return strings.Join(s, " ")
}

// udpInErrors reads each host's UDP InErrors counter.
func udpInErrors(b *testing.B, hs []*Host) []uint64 {
	ctx, cancel := contextWithTimeout()
	defer cancel()
	var out []uint64
	for _, h := range hs {
		st, err := h.UDPStats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, st.InErrors)
	}
	return out
}

func secs(v []time.Duration) string {
	var s []string
	for _, d := range v {
		s = append(s, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return strings.Join(s, " ")
}

// cpuTime sums the user and system CPU time of the processes named comm in h's
// namespace (to the kernel's tick, 10 ms).
func cpuTime(b *testing.B, h *Host, comm string) time.Duration {
	ctx, cancel := contextWithTimeout()
	defer cancel()
	out, err := h.Run(ctx, "ip", "netns", "pids", h.NS)
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, f := range strings.Fields(out) {
		st, err := os.ReadFile("/proc/" + f + "/stat")
		if err != nil {
			continue // exited
		}
		// pid (comm) state ppid ... utime stime are fields 14 and 15.
		open, close := strings.IndexByte(string(st), '('), strings.LastIndexByte(string(st), ')')
		if open < 0 || close < open || string(st[open+1:close]) != comm {
			continue
		}
		rest := strings.Fields(string(st[close+1:]))
		if len(rest) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(rest[11], 10, 64)
		stime, _ := strconv.ParseInt(rest[12], 10, 64)
		total += time.Duration(ut+stime) * (time.Second / clockTicks)
	}
	return total
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// startEcho measures what Host.Start itself costs (ip netns exec, unshare, sh,
// setsid): the time from starting /bin/echo in h to reading its line.
func startEcho(b *testing.B, h *Host) time.Duration {
	start := time.Now()
	p := h.Start(b, "/bin/echo", "started")
	if _, err := p.WaitLine(regexp.MustCompile(`^started$`), 10*time.Second); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
