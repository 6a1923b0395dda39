package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// genConfig writes a local config with nw workloads (spread over 30 nodes,
// so node n0 serves about nw/30 of them) and ns services.
func genConfig(path string, nw, ns int) error {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for i := 0; i < nw; i++ {
		fmt.Fprintf(&b, "- uid: c//Pod/ns%d/w%d\n  name: w%d\n  namespace: ns%d\n  serviceAccount: sa%d\n  workloadIps: [\"10.244.%d.%d\"]\n  protocol: HBONE\n  node: n%d\n  labels: {app: svc%d}\n  services:\n    \"ns%d/svc%d.ns%d.svc.cluster.local\":\n      80: 8080\n",
			i, i%10, i, i%10, i%50, i>>8, i&255, i%30, i%ns, i%10, i%ns, i%10)
	}
	b.WriteString("services:\n")
	for i := 0; i < ns; i++ {
		fmt.Fprintf(&b, "- name: svc%d\n  namespace: ns%d\n  hostname: svc%d.ns%d.svc.cluster.local\n  vips: [\"/10.96.%d.%d\"]\n  ports:\n    80: 8080\n",
			i, i%10, i, i%10, i>>8, i&255)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// memStatus reads the resident-set figures of a process, in kB: VmRSS and
// its split into anonymous memory (heap, stacks) and file-backed pages (the
// binary's code and read-only data that were touched).
func memStatus(pid int) (rss, anon, file int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	found := 0
	for s.Scan() {
		for key, dst := range map[string]*int64{"VmRSS:": &rss, "RssAnon:": &anon, "RssFile:": &file} {
			if v, ok := strings.CutPrefix(s.Text(), key); ok {
				if *dst, err = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err != nil {
					return 0, 0, 0, err
				}
				found++
			}
		}
	}
	if found != 3 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/status: VmRSS, RssAnon or RssFile missing", pid)
	}
	return rss, anon, file, nil
}

// BenchmarkRSS1000Workloads builds the ztunnel binary (CGO_ENABLED=0, as
// documented: a static binary without the cgo runtime), starts it with
// 1,000 workloads and 100 services in its state, waits until it is ready
// (certificates of its node's workloads issued) and reports VmRSS. Run with
// -benchtime=1x.
func BenchmarkRSS1000Workloads(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		b.Fatal(err)
	}
	cfg := filepath.Join(dir, "mesh.yaml")
	if err := genConfig(cfg, 1000, 100); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "-config", cfg, "-node", "n0", "-ip", "127.78.0.30", "-log-level", "warn")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		waitReady(b, "http://127.78.0.30:15021/healthz/ready")
		time.Sleep(500 * time.Millisecond) // let start-up garbage settle
		rss, anon, file, err := memStatus(cmd.Process.Pid)
		cancel()
		cmd.Wait()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(rss)/1024, "RSS-MB")
		b.ReportMetric(float64(anon)/1024, "anon-MB")
		b.ReportMetric(float64(file)/1024, "file-MB")
	}
}
