//go:build linux

package inpod

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// A minimal rtnetlink client for the two routing entries of the in-pod
// rules. It runs on the calling thread, so inside Netns.Do it programs the
// pod's namespace.

const (
	afInet  = unix.AF_INET
	afInet6 = unix.AF_INET6
)

func famName(fam int) string {
	if fam == afInet6 {
		return "IPv6"
	}
	return "IPv4"
}

// nlAttr appends a netlink attribute with a uint32 payload.
func nlAttr32(b []byte, typ uint16, v uint32) []byte {
	b = binary.NativeEndian.AppendUint16(b, 8)
	b = binary.NativeEndian.AppendUint16(b, typ)
	return binary.NativeEndian.AppendUint32(b, v)
}

// nlDo sends one request and waits for its acknowledgement.
func nlDo(typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	const seq = 1
	msg := make([]byte, 0, unix.SizeofNlMsghdr+len(body))
	msg = binary.NativeEndian.AppendUint32(msg, uint32(unix.SizeofNlMsghdr+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, typ)
	msg = binary.NativeEndian.AppendUint16(msg, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return fmt.Errorf("netlink: bad message length %d", l)
			}
			typ, mseq := binary.NativeEndian.Uint16(b[4:6]), binary.NativeEndian.Uint32(b[8:12])
			data := b[unix.SizeofNlMsghdr:l]
			b = b[min(nlAlign(l), len(b)):]
			if mseq != seq || typ != unix.NLMSG_ERROR {
				continue
			}
			if len(data) < 4 {
				return errors.New("netlink: short error message")
			}
			if code := int32(binary.NativeEndian.Uint32(data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// ruleBody is a fib_rule_hdr plus attributes: fwmark mark/mask, priority
// prio, lookup table.
func ruleBody(fam int, mark, mask, prio, table uint32) []byte {
	b := []byte{byte(fam), 0, 0, 0, 0, 0, 0, unix.FR_ACT_TO_TBL, 0, 0, 0, 0}
	if table < 256 {
		b[4] = byte(table)
	}
	b = nlAttr32(b, unix.FRA_PRIORITY, prio)
	b = nlAttr32(b, unix.FRA_FWMARK, mark)
	b = nlAttr32(b, unix.FRA_FWMASK, mask)
	return nlAttr32(b, unix.FRA_TABLE, table)
}

func addRule(fam int, mark, mask, prio, table uint32) error {
	err := nlDo(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ruleBody(fam, mark, mask, prio, table))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s rule fwmark %#x/%#x pref %d lookup %d: %w", famName(fam), mark, mask, prio, table, err)
	}
	return nil
}

func delRule(fam int, mark, mask, prio, table uint32) error {
	err := nlDo(unix.RTM_DELRULE, 0, ruleBody(fam, mark, mask, prio, table))
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete %s rule fwmark %#x/%#x pref %d lookup %d: %w", famName(fam), mark, mask, prio, table, err)
	}
	return nil
}

// routeBody is an rtmsg for "local default dev lo table T".
func routeBody(fam int, table uint32) ([]byte, error) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	b := []byte{byte(fam), 0, 0, 0, 0, unix.RTPROT_BOOT, unix.RT_SCOPE_HOST, unix.RTN_LOCAL, 0, 0, 0, 0}
	if table < 256 {
		b[4] = byte(table)
	}
	b = nlAttr32(b, unix.RTA_TABLE, table)
	return nlAttr32(b, unix.RTA_OIF, uint32(lo.Index)), nil
}

func addRoute(fam int, table uint32) error {
	body, err := routeBody(fam, table)
	if err == nil {
		err = nlDo(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body)
	}
	if err != nil {
		return fmt.Errorf("add %s route local default dev lo table %d: %w", famName(fam), table, err)
	}
	return nil
}

func delRoute(fam int, table uint32) error {
	body, err := routeBody(fam, table)
	if err == nil {
		err = nlDo(unix.RTM_DELROUTE, 0, body)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete %s route local default dev lo table %d: %w", famName(fam), table, err)
	}
	return nil
}
