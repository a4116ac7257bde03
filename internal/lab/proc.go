package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// maxProcOutput bounds the output a Proc keeps, so a chatty daemon cannot exhaust memory.
const maxProcOutput = 8 << 20

// stopGrace is how long a Proc gets between SIGTERM and SIGKILL at cleanup.
const stopGrace = 3 * time.Second

// ErrExited is returned by Proc.WaitLine when the process ended before printing the line.
var ErrExited = errors.New("lab: process exited")

// ErrTimeout is returned by bounded waits that ran out of time.
var ErrTimeout = errors.New("lab: timed out")

// Proc is a background process running in a lab namespace. Its standard output and
// standard error are captured together; it is killed when the test that started it ends.
type Proc struct {
	Name string // what was run, for messages
	Cmd  *exec.Cmd

	// wrapped: Cmd is `unshare … sh -c 'setsid prog & wait'`, and signals go to the
	// program's own process group (see Host.Start).
	wrapped bool

	mu      sync.Mutex
	target  int // the wrapped program's pid, once found
	out     bytes.Buffer
	dropped int           // bytes discarded because out was full
	changed chan struct{} // closed and replaced on every write
	done    chan struct{} // closed when the process has been reaped
	err     error         // Wait's result, valid after done
}

// Write implements io.Writer for the process's output pipes.
func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	room := maxProcOutput - p.out.Len()
	if room < len(b) {
		if room > 0 {
			p.out.Write(b[:room])
		}
		p.dropped += len(b) - max(room, 0)
	} else {
		p.out.Write(b)
	}
	close(p.changed)
	p.changed = make(chan struct{})
	return len(b), nil
}

// Output returns everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit status; it is meaningful only after Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Running reports whether the process is still alive.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// WaitLine waits up to timeout for a line of output matching re (searching from the
// first line, so a line printed before the call counts) and returns its submatches.
func (p *Proc) WaitLine(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		text := p.out.String()
		changed := p.changed
		p.mu.Unlock()
		for line := range strings.Lines(text) {
			if m := re.FindStringSubmatch(strings.TrimRight(line, "\r\n")); m != nil {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			// Output may still be flushing into the buffer; look once more.
			if m := re.FindStringSubmatch(p.Output()); m != nil {
				return m, nil
			}
			return nil, fmt.Errorf("%w before printing %q: %v\n%s", ErrExited, re, p.err, tail(p.Output()))
		case <-deadline.C:
			return nil, fmt.Errorf("%w after %v waiting for %s to print %q\n%s", ErrTimeout, timeout, p.Name, re, tail(p.Output()))
		}
	}
}

// Signal sends sig to the program and the processes it forked (its process group).
func (p *Proc) Signal(sig syscall.Signal) error {
	if !p.Running() {
		return ErrExited
	}
	if pid := p.programPID(); pid > 0 {
		if err := syscall.Kill(-pid, sig); err == nil {
			return nil
		}
		return syscall.Kill(pid, sig) // setsid has not run yet
	}
	return syscall.Kill(-p.Cmd.Process.Pid, sig)
}

// programPID returns the pid of the program itself: for a wrapped process the
// grandchild of Cmd (unshare → sh → program), found through /proc; 0 if not (yet) known.
func (p *Proc) programPID() int {
	if !p.wrapped {
		return p.Cmd.Process.Pid
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.target > 0 {
		return p.target
	}
	pid := p.Cmd.Process.Pid
	for range 2 {
		if pid = onlyChild(pid); pid <= 0 {
			return 0
		}
	}
	p.target = pid
	return pid
}

// onlyChild returns the first child of pid listed by /proc, or 0.
func onlyChild(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	c, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return c
}

// Stop sends SIGTERM to the program's process group, waits up to grace, then kills
// everything with SIGKILL; it returns once the process has been reaped (SIGKILL cannot
// be ignored, so the final wait is bounded too).
func (p *Proc) Stop(grace time.Duration) {
	if !p.Running() {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	if pid := p.programPID(); pid > 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	// Killing unshare makes its --kill-child SIGKILL the namespace's init, and the
	// kernel then kills every process in the PID namespace.
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
	}
}

// startProc starts cmd in its own process group with output captured and registers its
// cleanup on t; on failure or when t failed it logs what the process printed.
func startProc(t testing.TB, name string, cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Name: name, Cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	cmd.Stdout = p
	cmd.Stderr = p
	// Setpgid lets cleanup reach helpers the process forks (miredo's privproc);
	// Pdeathsig kills the process if the test binary dies without running cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(stopGrace)
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, tail(p.Output()))
		}
	})
	return p, nil
}

// tail returns the end of s, enough to diagnose a failure without flooding the log.
func tail(s string) string {
	const n = 6000
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// runCmd runs cmd to completion and returns its combined output, with the output in
// the error when it fails.
func runCmd(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return out.String(), fmt.Errorf("lab: %s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(tail(out.String())))
	}
	return out.String(), nil
}

// PID returns the program's process id: for a program run by Host.Start the program
// itself, not its wrapper; 0 while it is not known yet.
func (p *Proc) PID() int { return p.programPID() }
