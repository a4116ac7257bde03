package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab/impair"
)

// BenchmarkLabWAN compares the project with Miredo over wide-area paths: the
// topology of BenchmarkLabVsMiredo (teredo-socks with teredo-relay on a1, a Miredo
// client with a Miredo relay on a2, the project's server for both), with a WAN hop
// (ImpairWAN) in front of each NAT router that adds the same delay and random loss
// to every packet of either client, towards the server and the relays. For every
// profile in impair.Profiles it measures, alternating ours and Miredo's:
//
//   - time to first byte of an HTTP GET of a small file on the IPv6-only host by
//     curl: through teredo-socks (SOCKS5 CONNECT, then the GET) for ours, straight
//     over Miredo's TUN (TCP connect, then the GET) for Miredo;
//   - download and upload rates: LAB_WAN_MB (100) MiB or LAB_WAN_SECONDS (60) s,
//     whichever ends first, over one HTTP connection; the bytes moved are checked
//     against the served content (a download's prefix by the client, an upload's
//     by the server, which measures the upload's rate and resets a connection
//     cut short by the time limit).
//
// The kernel's TCP congestion control on the Miredo client's side is printed
// with the table (this machine's default is bbr); LAB_WAN_KERNEL_CC sets it for
// that namespace (a namespace may choose among reno, bbr and whatever the host
// allows). LAB_WAN_DIRECTIONS=download or upload measures one direction only.
// Last, with the WAN hops at no delay, teredo-socks's RSS is read with
// LAB_WAN_SESSIONS (10000) established idle SOCKS5 CONNECT sessions, next to its
// RSS idle after qualification and after the transfers.
// LAB_WAN_ROUNDS (1) sets the transfers per profile, direction and side,
// LAB_WAN_TTFB (7) the first-byte samples, LAB_WAN_PROFILES a comma-separated
// subset of profile names (default all). Medians are reported. Run as root:
//
//	go test -run XXX -bench LabWAN -benchtime 1x -timeout 60m ./internal/lab
func BenchmarkLabWAN(b *testing.B) {
	requireOurServer(b)
	requireOurSocks(b)
	requireOurRelay(b)
	Require(b, "miredo", "curl")
	rounds := envInt(b, "LAB_WAN_ROUNDS", 1)
	limit := time.Duration(envInt(b, "LAB_WAN_SECONDS", 60)) * time.Second
	size := int64(envInt(b, "LAB_WAN_MB", 100)) << 20
	samples := envInt(b, "LAB_WAN_TTFB", 7)
	sessions := envInt(b, "LAB_WAN_SESSIONS", 10000)
	profiles := wanProfiles(b)

	l := New(b, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}})
	a, bh := l.Clients["a1"], l.Clients["a2"]
	wans := []*WAN{l.ImpairWAN(b, a, impair.Profile{}, 1), l.ImpairWAN(b, bh, impair.Profile{}, 1)}
	srv := StartTeredoServer(b, l.Server, BuildCommand(b, "./"+ourServerDir))
	startOurRelay(b, l.Relay)
	startSecondMiredoRelay(b, l)
	content := fileContent(size)
	f := l.V6Host.ServeFile(b, netip.AddrPortFrom(V6HostAddr, 8080), size)
	small := l.V6Host.ServeFile(b, netip.AddrPortFrom(V6HostAddr, 8082), 1024)
	up := serveWANUploads(b, l.V6Host, netip.AddrPortFrom(V6HostAddr, 8081), size, limit)
	upFile := filepath.Join(b.TempDir(), "upload.bin")
	if _, err := WriteFile(upFile, size); err != nil {
		b.Fatal(err)
	}

	if v := os.Getenv("LAB_WAN_KERNEL_CC"); v != "" {
		if err := bh.sysctl("net.ipv4.tcp_congestion_control=" + v); err != nil {
			b.Fatal(err)
		}
	}
	kernelCC := readSysctl(b, bh, "net.ipv4.tcp_congestion_control")
	socks := startSocks(b, a, srv.Primary, "-status", wanSocksStatus, "-max-sessions", strconv.Itoa(sessions+100))
	time.Sleep(2 * time.Second)
	idle, err := socks.Proc.Memory()
	if err != nil {
		b.Fatal(err)
	}
	miredo := StartMiredoClient(b, bh, srv.Primary, MiredoClientOptions{})
	routeVia(b, l.V6Host, socks.Addr, RelayV6)
	routeVia(b, l.V6Host, miredo.Addr, secondRelayV6)
	sides := []struct {
		h     *Host
		extra []string
	}{{a, []string{"--socks5-hostname", socksListen}}, {bh, nil}}
	for _, s := range sides { // both clients find their relay before anything is timed
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		got, err := s.h.Curl(ctx, small.URL, append([]string{"--retry", "3", "--retry-all-errors"}, s.extra...)...)
		cancel()
		if err == nil {
			err = small.Verify(got)
		}
		if err != nil {
			b.Fatalf("warm-up on %s: %v", s.h.Name, err)
		}
	}

	var rows []wanRow
	for _, p := range profiles {
		for _, w := range wans {
			w.SetProfile(p)
		}
		r := wanRow{profile: p}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rtts, _, err := pingSeries(ctx, a, ServerPrimary, 20, 10*time.Millisecond, p.RTT+300*time.Millisecond)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		r.rtt = medianDur(rtts)
		for range samples {
			for side, s := range sides {
				d, err := ttfb(s.h, small, s.extra)
				if err != nil {
					b.Fatalf("%s, first byte on %s: %v", p, s.h.Name, err)
				}
				r.ttfb[side] = append(r.ttfb[side], d)
			}
		}
		dirs := os.Getenv("LAB_WAN_DIRECTIONS")
		for range rounds {
			for side, s := range sides {
				if dirs == "upload" {
					break
				}
				rate, err := wanDownload(s.h, f, content, limit, s.extra)
				if err != nil {
					b.Fatalf("%s, download on %s: %v", p, s.h.Name, err)
				}
				r.down[side] = append(r.down[side], rate)
			}
			for side, s := range sides {
				if dirs == "download" {
					break
				}
				rate, err := wanUpload(s.h, up, upFile, content, s.extra)
				if err != nil {
					b.Fatalf("%s, upload on %s: %v", p, s.h.Name, err)
				}
				r.up[side] = append(r.up[side], rate)
			}
		}
		r.tcp = socksTCPCounters(b, a)
		r.socksCPU = cpuTime(b, a, "teredo-socks")
		for i, w := range wans {
			r.hop[i] = [2]impair.Stats{w.Up.Stats(), w.Down.Stats()}
		}
		fmt.Printf("%s done: %s\n", p, r.line())
		rows = append(rows, r)
	}
	for _, w := range wans {
		w.SetProfile(impair.Profile{})
	}
	with, after, took := heldSessions(b, l.V6Host, socks, 9002, sessions)
	printWAN(rows, rounds, samples, size, limit, kernelCC)
	fmt.Printf("teredo-socks RSS: %.1f MB idle after qualification; %.1f MB after the transfers; %.1f MB with %d idle SOCKS5 CONNECT sessions (opened in %v, no WAN delay), %.1f kB per session\n",
		mb(idle.RSS), mb(after.RSS), mb(with.RSS), sessions, took.Round(time.Millisecond), float64(with.RSS-after.RSS)/float64(sessions)/1e3)
	b.ReportMetric(mb(idle.RSS), "idle-RSS-MB")
	b.ReportMetric(mb(with.RSS), "sessions-RSS-MB")
	for _, r := range rows {
		name := strings.NewReplacer("%", "pct", ".", "_").Replace(r.profile.Name)
		b.ReportMetric(median(r.down[0])/median(r.down[1]), name+"-down-ratio")
		b.ReportMetric(median(r.up[0])/median(r.up[1]), name+"-up-ratio")
	}
}

// wanRow holds one profile's measurements; index 0 is ours, 1 Miredo's.
type wanRow struct {
	profile  impair.Profile
	rtt      time.Duration // ping from a1 to the server through the hop
	ttfb     [2][]time.Duration
	down, up [2][]float64       // MB/s
	hop      [2][2]impair.Stats // per side, Up and Down, cumulative
	tcp      map[string]uint64  // teredo-socks's TCP counters, cumulative
	socksCPU time.Duration      // teredo-socks's CPU time, cumulative
}

func (r wanRow) line() string {
	return fmt.Sprintf("teredo-socks CPU %.1f s, TCP %v; down %.2f vs %.2f MB/s, up %.2f vs %.2f MB/s, first byte %.1f vs %.1f ms",
		r.socksCPU.Seconds(), r.tcp, median(r.down[0]), median(r.down[1]), median(r.up[0]), median(r.up[1]), ms(medianDur(r.ttfb[0])), ms(medianDur(r.ttfb[1])))
}

func printWAN(rows []wanRow, rounds, samples int, size int64, limit time.Duration, kernelCC string) {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("\nWAN profiles; %d round(s) per profile, ours and Miredo alternating; %d MiB or %v per transfer; %s; Miredo's TCP (the kernel's) uses %s\n", rounds, size>>20, limit, kernelAndCPUs(), kernelCC)
	w("| profile (ping RTT) | direction | ours MB/s | Miredo MB/s | ours/Miredo | rounds (ours; Miredo) |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		for _, d := range []struct {
			name string
			v    [2][]float64
		}{{"download", r.down}, {"upload", r.up}} {
			w("| %s (%.1f ms) | %s | %.2f | %.2f | %.2f | %s; %s |\n", r.profile, ms(r.rtt), d.name, median(d.v[0]), median(d.v[1]), median(d.v[0])/median(d.v[1]), floats2(d.v[0]), floats2(d.v[1]))
		}
	}
	w("\n| profile | first byte, ours (SOCKS5 CONNECT + GET) ms | Miredo (connect + GET) ms | ours − Miredo ms | samples (ours; Miredo) |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		ta, tb := medianDur(r.ttfb[0]), medianDur(r.ttfb[1])
		w("| %s | %.1f | %.1f | %+.1f | %s; %s |\n", r.profile, ms(ta), ms(tb), ms(ta-tb), durs(r.ttfb[0]), durs(r.ttfb[1]))
	}
	w("(%d first-byte samples per side and profile.) Packets through the WAN hops, up/down (in, lost):", samples)
	for _, r := range rows {
		h := r.hop
		w(" %s ours %d/%d (%d/%d), Miredo %d/%d (%d/%d);", r.profile, h[0][0].In, h[0][1].In, h[0][0].Lost, h[0][1].Lost, h[1][0].In, h[1][1].In, h[1][0].Lost, h[1][1].Lost)
	}
	w("\n")
	fmt.Print(sb.String())
}

func floats2(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(s, " ")
}

// wanProfiles returns the profiles LAB_WAN_PROFILES names, or all.
func wanProfiles(b *testing.B) []impair.Profile {
	v := os.Getenv("LAB_WAN_PROFILES")
	if v == "" {
		return impair.Profiles
	}
	var out []impair.Profile
	for _, name := range strings.Split(v, ",") {
		p, ok := impair.ProfileByName(strings.TrimSpace(name))
		if !ok {
			b.Fatalf("LAB_WAN_PROFILES: no profile %q (have %v)", name, impair.Profiles)
		}
		out = append(out, p)
	}
	return out
}

// ttfb runs curl on h for the small file and returns its time to the first byte
// of the response (curl's time_starttransfer: from its start, through the
// SOCKS5 handshake when extra names a proxy, to the first byte).
func ttfb(h *Host, f *FileServer, extra []string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--silent", "--show-error", "--fail", "--noproxy", "", "--output", "/dev/null", "--write-out", "%{size_download} %{time_starttransfer}"}, extra...)
	cmd := h.Command(ctx, "curl", append(args, f.URL)...)
	cmd.Env = curlEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("curl: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var n int64
	var secs float64
	if _, err := fmt.Sscanf(string(out), "%d %g", &n, &secs); err != nil || n != f.Want.Size {
		return 0, fmt.Errorf("curl wrote %q", out)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// curlTimedOut is curl's exit status when --max-time ends a transfer.
const curlTimedOut = 28

// wanDownload fetches f with curl on h for at most limit and returns the rate in
// MB/s. What arrived must be exactly the start of the served content.
func wanDownload(h *Host, f *FileServer, content []byte, limit time.Duration, extra []string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit+time.Minute)
	defer cancel()
	args := append([]string{"--silent", "--show-error", "--fail", "--noproxy", "", "--output", "-", "--max-time", strconv.FormatFloat(limit.Seconds(), 'f', 3, 64)}, extra...)
	cmd := h.Command(ctx, "curl", append(args, f.URL)...)
	cmd.Env = curlEnv()
	hw := &countingHash{h: sha256.New()}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = hw, &stderr
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == curlTimedOut && hw.n > 0) {
		return 0, fmt.Errorf("curl after %d bytes: %w: %s", hw.n, err, strings.TrimSpace(stderr.String()))
	}
	if hw.n > int64(len(content)) {
		return 0, fmt.Errorf("%w: %d bytes, more than the %d served", ErrDigest, hw.n, len(content))
	}
	if got, want := hex.EncodeToString(hw.h.Sum(nil)), sha256.Sum256(content[:hw.n]); got != hex.EncodeToString(want[:]) {
		return 0, fmt.Errorf("%w: the first %d bytes have sha256 %s, want %x", ErrDigest, hw.n, got, want)
	}
	return mbps(hw.n, d), nil
}

// wanUploads takes uploads on the IPv6-only host for the WAN benchmark. A
// transfer ends at the full size or after limit, whichever comes first: then the
// handler records how much arrived, with its digest, and, if it was cut short,
// resets the connection, so the sender drops what it still buffers (at a few
// hundred kB/s megabytes of buffers would otherwise take minutes to drain).
type wanUploads struct {
	URL     string
	size    int64
	limit   time.Duration
	results chan wanUploadResult
}

type wanUploadResult struct {
	got  Digest
	took time.Duration // from the request's arrival to the last byte counted
	err  error
}

func serveWANUploads(b *testing.B, h *Host, addr netip.AddrPort, size int64, limit time.Duration) *wanUploads {
	u := &wanUploads{size: size, limit: limit, results: make(chan wanUploadResult, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc(UploadPath, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		end := start.Add(limit)
		hw := &countingHash{h: sha256.New()}
		buf := make([]byte, 256<<10)
		var err error
		for hw.n < size && time.Now().Before(end) {
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(end)
			var n int
			n, err = r.Body.Read(buf[:min(int64(len(buf)), size-hw.n)])
			hw.Write(buf[:n])
			if err != nil {
				break
			}
		}
		res := wanUploadResult{got: digest(hw.h, hw.n), took: time.Since(start)}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
			res.err = err
		}
		select {
		case u.results <- res:
		default:
		}
		if hw.n == size {
			fmt.Fprintf(w, "%d %s\n", res.got.Size, res.got.SHA256)
			return
		}
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // reset: the sender drops its buffers
				}
				c.Close()
			}
		}
	})
	bound := h.serveHTTP(b, h.listenHTTP(b, "upload", addr), mux)
	u.URL = "http://" + bound.String() + UploadPath
	return u
}

// wanUpload PUTs the file at path (the first u.size bytes of content) with curl
// on h and returns the rate in MB/s that the server measured. What the server
// received must be exactly the start of the content.
func wanUpload(h *Host, u *wanUploads, path string, content []byte, extra []string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), u.limit+time.Minute)
	defer cancel()
	args := append([]string{"--silent", "--show-error", "--noproxy", "", "--upload-file", path, "--max-time", strconv.FormatFloat((u.limit + 30*time.Second).Seconds(), 'f', 3, 64)}, extra...)
	cmd := h.Command(ctx, "curl", append(args, u.URL)...)
	cmd.Env = curlEnv()
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	cmd.WaitDelay = time.Second
	cerr := cmd.Run() // fails when the server cuts the upload short
	var res wanUploadResult
	select {
	case res = <-u.results:
	case <-time.After(30 * time.Second):
		return 0, fmt.Errorf("the server recorded no upload; curl: %v: %s", cerr, strings.TrimSpace(stderr.String()))
	}
	if res.err != nil {
		return 0, fmt.Errorf("the server's read after %d bytes: %w (curl: %v)", res.got.Size, res.err, cerr)
	}
	if res.got.Size == 0 {
		return 0, fmt.Errorf("the server received nothing; curl: %v: %s", cerr, strings.TrimSpace(stderr.String()))
	}
	if sum := sha256.Sum256(content[:res.got.Size]); res.got.SHA256 != hex.EncodeToString(sum[:]) {
		return 0, fmt.Errorf("%w: the server received %d bytes sha256 %s, want sha256 %x", ErrDigest, res.got.Size, res.got.SHA256, sum)
	}
	return mbps(res.got.Size, res.took), nil
}

// wanSocksStatus is where teredo-socks serves /status in its namespace.
const wanSocksStatus = "127.0.0.1:9100"

// socksTCPCounters reads the tcp_ counters of teredo-socks's /status on h.
func socksTCPCounters(b *testing.B, h *Host) map[string]uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+wanSocksStatus+"/status", nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := h.HTTPClient().Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Counters map[string]uint64
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		b.Fatal(err)
	}
	out := map[string]uint64{}
	for k, v := range st.Counters {
		if strings.HasPrefix(k, "tcp_") {
			out[strings.TrimPrefix(k, "tcp_")] = v
		}
	}
	return out
}

// readSysctl reads a net.* sysctl in h's namespace.
func readSysctl(b *testing.B, h *Host, key string) string {
	var v []byte
	err := inNetns(h.NS, func() (err error) {
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

func mb(n int64) float64 { return float64(n) / 1e6 }
