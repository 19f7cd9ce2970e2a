// Package hostutil holds what the Go test hosts (kv_host, counter_host) share: launching the
// plugin command like go-plugin's examples, ending it without leaving processes behind, the
// stderr report lines and the bench figures. tests/gobuild.py puts it at plugbay.test/hostutil.
package hostutil

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
)

// Handshake is the examples' handshake: BASIC_PLUGIN=hello, app protocol version 1.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

// Host runs one plugin the way go-plugin's example hosts do (`sh -c $ENV`), but in its own
// process group: dash forks rather than execs, and go-plugin 1.0.1's forced kill only hits `sh`,
// after which Kill would wait for the plugin forever. The group lets us end the plugin as well.
type Host struct {
	Prog     string
	Label    string // when a host runs more than one plugin: its report lines say plugin=Label
	Cmd      *exec.Cmd
	Sink     *LogSink
	timedOut atomic.Bool
}

// NewHost prepares the plugin command from the environment variable envVar.
func NewHost(prog, envVar string, verbose bool) *Host {
	cmd := exec.Command("sh", "-c", os.Getenv(envVar))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	h := &Host{Prog: prog, Cmd: cmd}
	h.Sink = &LogSink{verbose: verbose, onForced: h.killGroup}
	return h
}

// Logger is the go-plugin client logger; it also relays the plugin's own stderr lines.
func (h *Host) Logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "plugin", Level: hclog.Trace, Output: h.Sink})
}

func (h *Host) killGroup() {
	if h.Cmd.Process != nil {
		_ = syscall.Kill(-h.Cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Watchdog ends the plugin's group (and those of others, hosts of the same run) and exits with
// code 3 once d has passed.
func (h *Host) Watchdog(d time.Duration, others ...*Host) {
	time.AfterFunc(d, func() {
		h.timedOut.Store(true) // before the kill: the call the kill ends must not exit first (see Fail)
		fmt.Fprintf(os.Stderr, "%s: timed out after %s\n", h.Prog, d)
		for _, o := range others {
			o.timedOut.Store(true)
			o.killGroup()
		}
		h.killGroup()
		os.Exit(3)
	})
}

// Fail prints the run's error on stdout and exits with code 1, unless the watchdog fired: the
// error is then the kill's doing, and the watchdog's exit (code 3) is the one to report.
func (h *Host) Fail(line string) {
	if h.timedOut.Load() {
		select {}
	}
	fmt.Println(line)
	os.Exit(1)
}

// Kill runs client.Kill (GRPCController.Shutdown, 2 s grace, forced kill), makes sure nothing of
// the plugin's process group survives, and reports on stderr whether the exit was graceful.
func (h *Host) Kill(client *plugin.Client) {
	done := make(chan struct{})
	go func() {
		client.Kill()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.killGroup()
		<-done
	}
	h.killGroup()
	fmt.Fprintf(os.Stderr, "%s: kill %sgraceful=%t\n", h.Prog, h.tag(), h.Sink.Graceful())
}

func (h *Host) tag() string {
	if h.Label == "" {
		return ""
	}
	return "plugin=" + h.Label + " "
}

// ReportHandshake prints the negotiated connection on stderr.
func (h *Host) ReportHandshake(client *plugin.Client, autoMTLS bool, started time.Time) {
	startMS := float64(time.Since(started).Microseconds()) / 1000
	if rc := client.ReattachConfig(); rc != nil {
		fmt.Fprintf(os.Stderr, "%s: handshake %sprotocol=%s version=%d network=%s address=%s automtls=%t start_ms=%.1f\n",
			h.Prog, h.tag(), client.Protocol(), client.NegotiatedVersion(), rc.Addr.Network(), rc.Addr.String(), autoMTLS, startMS)
	}
}

// LogSink sees every line of go-plugin's client logger: it remembers how Kill ended and shows
// the lines on stderr when verbose, else only warnings and errors.
type LogSink struct {
	mu       sync.Mutex
	verbose  bool
	graceful bool
	forced   bool
	onForced func()
}

func (s *LogSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	forcedNow := false
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasSuffix(trimmed, ": plugin exited") {
			s.graceful = true
		}
		if strings.Contains(trimmed, "plugin failed to exit gracefully") {
			s.forced, forcedNow = true, true
		}
		if s.verbose || strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]") {
			fmt.Fprintln(os.Stderr, line)
		}
	}
	s.mu.Unlock()
	if forcedNow && s.onForced != nil {
		s.onForced()
	}
	return len(p), nil
}

// Graceful tells whether the plugin exited within the grace period after Shutdown.
func (s *LogSink) Graceful() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.graceful && !s.forced
}

// PrintBench prints the bench figures as one JSON line on stdout.
func PrintBench(latUS []float64, first, total time.Duration, autoMTLS bool) {
	out, _ := json.Marshal(BenchFigures(latUS, first, total, autoMTLS))
	fmt.Println(string(out))
}

// BenchFigures are one plugin's bench figures: its start to first call, the p50 and p99 of its
// calls' latencies (us) and its calls per second over total, the time its calls took.
func BenchFigures(latUS []float64, first, total time.Duration, autoMTLS bool) map[string]interface{} {
	sort.Float64s(latUS)
	pct := func(p float64) float64 { return latUS[int(p*float64(len(latUS)-1)+0.5)] }
	return map[string]interface{}{
		"start_to_first_call_ms": float64(first.Microseconds()) / 1000,
		"p50_us":                 pct(0.50),
		"p99_us":                 pct(0.99),
		"n":                      len(latUS),
		"calls_per_s":            float64(len(latUS)) / total.Seconds(),
		"automtls":               autoMTLS,
	}
}
