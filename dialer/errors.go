package dialer

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Error is a gVisor network error made comparable: errors.Is matches it
// against the syscall.Errno a kernel socket would have returned, and against
// net.ErrClosed or os.ErrDeadlineExceeded where those apply.
type Error struct {
	// Msg is gVisor's description.
	Msg string
	// Errno is the closest system error number, or 0.
	Errno syscall.Errno
	// Sentinel is nil or what the error also matches besides Errno, such
	// as net.ErrClosed or os.ErrDeadlineExceeded.
	Sentinel error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the errno and sentinel, for errors.Is.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Errno != 0 {
		errs = append(errs, e.Errno)
	}
	if e.Sentinel != nil {
		errs = append(errs, e.Sentinel)
	}
	return errs
}

// Timeout reports whether the error is a timeout, for net.Error.
func (e *Error) Timeout() bool {
	return e.Errno == syscall.ETIMEDOUT || errors.Is(e.Sentinel, os.ErrDeadlineExceeded)
}

// Temporary is part of net.Error.
func (e *Error) Temporary() bool { return e.Timeout() }

var _ net.Error = (*Error)(nil)

// errnoOf maps gVisor's errors to kernel error numbers. It is read-only.
var errnoOf = map[string]struct {
	errno    syscall.Errno
	sentinel error
}{
	(&tcpip.ErrConnectionRefused{}).String():         {syscall.ECONNREFUSED, nil},
	(&tcpip.ErrHostUnreachable{}).String():           {syscall.EHOSTUNREACH, nil},
	(&tcpip.ErrHostDown{}).String():                  {syscall.EHOSTDOWN, nil},
	(&tcpip.ErrNetworkUnreachable{}).String():        {syscall.ENETUNREACH, nil},
	(&tcpip.ErrNoNet{}).String():                     {syscall.ENONET, nil},
	(&tcpip.ErrTimeout{}).String():                   {syscall.ETIMEDOUT, nil},
	(&tcpip.ErrConnectionReset{}).String():           {syscall.ECONNRESET, nil},
	(&tcpip.ErrConnectionAborted{}).String():         {syscall.ECONNABORTED, nil},
	(&tcpip.ErrAborted{}).String():                   {syscall.ECONNABORTED, nil},
	(&tcpip.ErrNotConnected{}).String():              {syscall.ENOTCONN, nil},
	(&tcpip.ErrAlreadyConnected{}).String():          {syscall.EISCONN, nil},
	(&tcpip.ErrAlreadyConnecting{}).String():         {syscall.EALREADY, nil},
	(&tcpip.ErrPortInUse{}).String():                 {syscall.EADDRINUSE, nil},
	(&tcpip.ErrDuplicateAddress{}).String():          {syscall.EADDRINUSE, nil},
	(&tcpip.ErrBadLocalAddress{}).String():           {syscall.EADDRNOTAVAIL, nil},
	(&tcpip.ErrMessageTooLong{}).String():            {syscall.EMSGSIZE, nil},
	(&tcpip.ErrNoBufferSpace{}).String():             {syscall.ENOBUFS, nil},
	(&tcpip.ErrWouldBlock{}).String():                {syscall.EAGAIN, nil},
	(&tcpip.ErrDestinationRequired{}).String():       {syscall.EDESTADDRREQ, nil},
	(&tcpip.ErrInvalidOptionValue{}).String():        {syscall.EINVAL, nil},
	(&tcpip.ErrBadAddress{}).String():                {syscall.EFAULT, nil},
	(&tcpip.ErrClosedForSend{}).String():             {syscall.EPIPE, nil},
	(&tcpip.ErrInvalidEndpointState{}).String():      {syscall.EINVAL, net.ErrClosed},
	(&tcpip.ErrAddressFamilyNotSupported{}).String(): {syscall.EAFNOSUPPORT, nil},
	(&tcpip.ErrNotSupported{}).String():              {syscall.EOPNOTSUPP, nil},
	(&tcpip.ErrNoPortAvailable{}).String():           {syscall.EADDRNOTAVAIL, nil},
	(&tcpip.ErrAlreadyBound{}).String():              {syscall.EINVAL, nil},
	(&tcpip.ErrNotPermitted{}).String():              {syscall.EPERM, nil},
}

// FromTCPIP converts a gVisor error to an *Error.
func FromTCPIP(err tcpip.Error) error {
	if err == nil {
		return nil
	}
	return fromString(err.String())
}

func fromString(msg string) *Error {
	m := errnoOf[msg]
	return &Error{Msg: msg, Errno: m.errno, Sentinel: m.sentinel}
}

// errDeadline is the error of an operation whose deadline passed. It wraps
// os.ErrDeadlineExceeded and is a net.Error with Timeout true.
var errDeadline error = &Error{Msg: "i/o timeout", Sentinel: os.ErrDeadlineExceeded}

// TranslateError rewrites an error returned by gonet (gVisor's net.Conn
// adapter), which reports gVisor errors as opaque strings, often inside a
// *net.OpError, into one whose chain holds an *Error.
func TranslateError(err error) error {
	var op *net.OpError
	if !errors.As(err, &op) {
		if err == nil || err == io.EOF {
			return err
		}
		if _, ok := errnoOf[err.Error()]; ok {
			return fromString(err.Error())
		}
		return err
	}
	inner := op.Err
	if _, ok := inner.(*Error); ok || inner == nil {
		return err
	}
	if ne, ok := inner.(net.Error); ok && ne.Timeout() {
		inner = errDeadline
	} else {
		inner = fromString(inner.Error())
	}
	return &net.OpError{Op: op.Op, Net: op.Net, Source: op.Source, Addr: op.Addr, Err: inner}
}
