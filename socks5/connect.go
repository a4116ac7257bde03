package socks5

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
)

// copyBufSize is the CONNECT relay buffer: large enough for a full TCP
// receive window's worth of reads to amortise syscalls, small enough that
// a thousand idle sessions cost little once buffers return to the pool.
const copyBufSize = 32 << 10

func (s *Server) connect(ss *session, req request) {
	if s.Dial == nil {
		s.reply(ss, ReplyCommandNotSupported, addr{})
		return
	}
	ctx, cancel := s.dialContext(ss)
	target, err := s.Dial(ctx, "tcp", req.dst.hostPort())
	cancel()
	if err != nil {
		rep := s.replyForDialErr(ss, err)
		s.log.Debug("socks5: connect failed", "client", ss.conn.RemoteAddr(), "dst", req.dst, "reply", rep, "err", err)
		s.reply(ss, rep, addr{})
		return
	}
	if !ss.track(target) {
		target.Close()
		return
	}
	var bnd addr
	if ta, ok := target.LocalAddr().(*net.TCPAddr); ok {
		bnd = addrFromAddrPort(ta.AddrPort())
	}
	if err := s.reply(ss, ReplySucceeded, bnd); err != nil {
		return
	}
	s.log.Debug("socks5: connected", "client", ss.conn.RemoteAddr(), "dst", req.dst)

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pipe(ss, target, ss.conn, &s.c.bytesUp)
	}()
	s.pipe(ss, ss.conn, target, &s.c.bytesDown)
	<-done
}

// pipe copies src to dst with a pooled buffer. At EOF it half-closes dst so
// the far end sees the same EOF while the other direction keeps flowing;
// on any other failure it closes the whole session, which also ends the
// other direction's pipe.
//
// It does not use io.Copy: *net.TCPConn's ReadFrom falls back to a fresh
// 32 KiB buffer per call when the source is not a kernel socket, which is
// always the case for a user-space stack.
func (s *Server) pipe(ss *session, dst, src net.Conn, count *atomic.Uint64) {
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, copyBufSize)
		bp = &b
	}
	defer s.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				ss.close()
				return
			}
			count.Add(uint64(n))
		}
		if rerr == nil {
			continue
		}
		if !errors.Is(rerr, io.EOF) {
			ss.close()
			return
		}
		// Without CloseWrite there is no way to pass the EOF on short of
		// closing the connection, which would cut off the reply still
		// coming the other way; the session then ends when the other
		// direction does.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() != nil {
				ss.close()
			}
		}
		return
	}
}
