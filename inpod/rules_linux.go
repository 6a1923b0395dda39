//go:build linux

package inpod

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// Apply installs the rules inside ns: the packet-filter rules (through
// iptables-restore and ip6tables-restore, or nft, run inside the
// namespace) and the ip rule and local route that route connection-marked
// replies back to the proxy. It is idempotent: on a namespace that
// already has in-pod chains it replaces their contents in one transaction
// per table instead of duplicating them, which also repairs drift (a
// deleted jump, a changed DNS setting). The namespace is never left
// without capture while rules are replaced.
//
// Apply needs CAP_SYS_ADMIN (to enter ns) and CAP_NET_ADMIN, and the
// iptables-restore/iptables-save (or nft) commands.
func (r *Rules) Apply(ctx context.Context, ns *Netns) error {
	c, err := r.resolve()
	if err != nil {
		return err
	}
	err = ns.Do(func() error {
		switch c.Backend {
		case IPTables:
			for _, v6 := range c.families() {
				if err := c.applyIPTables(ctx, v6); err != nil {
					return err
				}
			}
		case NFTables:
			script, err := r.NFTables()
			if err != nil {
				return err
			}
			if !c.CaptureDNS {
				// A raw table left from an earlier Apply with DNS capture.
				script += nftDelete(nftRaw)
			}
			if err := run(ctx, script, "nft", "-f", "-"); err != nil {
				return err
			}
		}
		return c.routing(true)
	})
	if err != nil {
		return fmt.Errorf("inpod: apply %s rules in %s: %w", c.Backend, ns, err)
	}
	return nil
}

// Remove deletes what Apply installed in ns: the jumps to the in-pod
// chains and the chains themselves (or the three nft tables), the ip
// rule and the local route. Rules of anyone else are left alone. Removing
// from a namespace that has none of them succeeds.
func (r *Rules) Remove(ctx context.Context, ns *Netns) error {
	c, err := r.resolve()
	if err != nil {
		return err
	}
	err = ns.Do(func() error {
		var errs []error
		switch c.Backend {
		case IPTables:
			for _, v6 := range c.families() {
				errs = append(errs, c.removeIPTables(ctx, v6))
			}
		case NFTables:
			errs = append(errs, run(ctx, nftDelete(nftNat, nftMangle, nftRaw), "nft", "-f", "-"))
		}
		errs = append(errs, c.routing(false))
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("inpod: remove %s rules from %s: %w", c.Backend, ns, err)
	}
	return nil
}

// families lists the address families to program: false for IPv4, true
// for IPv6.
func (c *resolved) families() []bool {
	if c.IPv4Only {
		return []bool{false}
	}
	return []bool{false, true}
}

func iptCommands(v6 bool) (save, restore string) {
	if v6 {
		return "ip6tables-save", "ip6tables-restore"
	}
	return "iptables-save", "iptables-restore"
}

// applyIPTables programs one address family. On a namespace without
// in-pod chains the text is IPTablesRestore's, unchanged; otherwise it is
// rewritten so that the chains are flushed rather than created and the
// existing jumps are deleted before they are added again.
func (c *resolved) applyIPTables(ctx context.Context, v6 bool) error {
	save, restore := iptCommands(v6)
	out, err := output(ctx, save)
	if err != nil {
		return err
	}
	cur := parseSave(out)
	want := c.iptables(v6)
	var b strings.Builder
	if cur.empty() {
		for _, t := range want {
			b.WriteString("* " + t.name + "\n")
			for _, ch := range t.chains {
				b.WriteString("-N " + ch + "\n")
			}
			for _, l := range t.rules {
				b.WriteString(l + "\n")
			}
			b.WriteString("COMMIT\n")
		}
	} else {
		wanted := map[string]bool{}
		for _, t := range want {
			wanted[t.name] = true
			b.WriteString("*" + t.name + "\n")
			// With --noflush, a chain line creates the chain or, if it
			// exists, flushes it.
			for _, ch := range t.chains {
				b.WriteString(":" + ch + " - [0:0]\n")
			}
			if old := cur[t.name]; old != nil {
				for _, j := range old.jumps {
					b.WriteString("-D" + strings.TrimPrefix(j, "-A") + "\n")
				}
			}
			for _, l := range t.rules {
				b.WriteString(l + "\n")
			}
			b.WriteString("COMMIT\n")
		}
		for _, name := range cur.tables() {
			if !wanted[name] {
				cur[name].writeRemove(&b, name)
			}
		}
	}
	return run(ctx, b.String(), restore, "--noflush", "--wait", "10")
}

func (c *resolved) removeIPTables(ctx context.Context, v6 bool) error {
	save, restore := iptCommands(v6)
	out, err := output(ctx, save)
	if err != nil {
		return err
	}
	cur := parseSave(out)
	if cur.empty() {
		return nil
	}
	var b strings.Builder
	for _, name := range cur.tables() {
		cur[name].writeRemove(&b, name)
	}
	return run(ctx, b.String(), restore, "--noflush", "--wait", "10")
}

// saveTable is what iptables-save shows of the in-pod chains in one table.
type saveTable struct {
	chains []string // in-pod chains that exist
	jumps  []string // "-A" lines of other chains whose target is an in-pod chain
}

func (t *saveTable) writeRemove(b *strings.Builder, name string) {
	b.WriteString("*" + name + "\n")
	for _, j := range t.jumps {
		b.WriteString("-D" + strings.TrimPrefix(j, "-A") + "\n")
	}
	for _, ch := range t.chains {
		b.WriteString("-F " + ch + "\n")
	}
	for _, ch := range t.chains {
		b.WriteString("-X " + ch + "\n")
	}
	b.WriteString("COMMIT\n")
}

// saveState maps table names to their in-pod chains and jumps.
type saveState map[string]*saveTable

func (s saveState) empty() bool { return len(s) == 0 }

// tables returns the table names in a fixed order.
func (s saveState) tables() []string {
	var out []string
	for _, n := range []string{"mangle", "nat", "raw", "filter", "security"} {
		if s[n] != nil {
			out = append(out, n)
		}
	}
	return out
}

func ours(chain string) bool { return chain == chainPrerouting || chain == chainOutput }

// parseSave reads iptables-save output and keeps the in-pod chains and
// the rules that jump to them. Tables without either are left out.
func parseSave(out []byte) saveState {
	s := saveState{}
	var table string
	get := func() *saveTable {
		if s[table] == nil {
			s[table] = &saveTable{}
		}
		return s[table]
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if ours(name) {
				get().chains = append(get().chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if len(f) >= 4 && !ours(f[1]) && (f[len(f)-2] == "-j" || f[len(f)-2] == "-g") && ours(f[len(f)-1]) {
				get().jumps = append(get().jumps, line)
			}
		}
	}
	return s
}

// run runs a command with stdin; its output goes into the error.
func run(ctx context.Context, stdin, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// routing adds (or deletes) "ip rule fwmark ConnMark/0xfff pref
// RulePriority lookup RouteTable" and "ip route local default dev lo
// table RouteTable", for IPv4 and, unless IPv4Only, for IPv6. Apply adds
// the IPv6 route only if lo has IPv6 enabled; Remove always tries. Both
// skip IPv6 on a kernel without it. It runs on the namespace's thread.
func (c *resolved) routing(add bool) error {
	var errs []error
	if add {
		errs = append(errs, addRoute(afInet, c.RouteTable), addRule(afInet, c.ConnMark, ProxyMask, c.RulePriority, c.RouteTable))
		if !c.IPv4Only {
			if ipv6On() {
				errs = append(errs, addRoute(afInet6, c.RouteTable))
			}
			errs = append(errs, noV6(addRule(afInet6, c.ConnMark, ProxyMask, c.RulePriority, c.RouteTable)))
		}
	} else {
		errs = append(errs, delRule(afInet, c.ConnMark, ProxyMask, c.RulePriority, c.RouteTable), delRoute(afInet, c.RouteTable))
		if !c.IPv4Only {
			errs = append(errs, noV6(delRule(afInet6, c.ConnMark, ProxyMask, c.RulePriority, c.RouteTable)))
			if ipv6On() {
				errs = append(errs, delRoute(afInet6, c.RouteTable))
			}
		}
	}
	return errors.Join(errs...)
}

// noV6 drops the error of a kernel without IPv6.
func noV6(err error) error {
	if errors.Is(err, unix.EAFNOSUPPORT) {
		return nil
	}
	return err
}

// ipv6On reports whether the calling thread's namespace has IPv6 enabled
// on lo. /proc/sys/net shows the namespace of the thread that opens it.
func ipv6On() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}
