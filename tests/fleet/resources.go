package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on Linux).
const clockTicks = 100

// procStat is a process's CPU seconds and resident bytes from /proc/<pid>/stat.
func procStat(pid int) (cpu float64, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("stat of pid %d: %d fields", pid, len(f))
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return (utime + stime) / clockTicks, pages * int64(os.Getpagesize()), nil
}

// cpuMeter adds up the CPU seconds of named processes over their
// restarts: it samples each one's current pid every second, so a killed
// process's time up to its last sample is kept.
type cpuMeter struct {
	mu      sync.Mutex
	done    map[string]float64 // CPU of earlier pids of a name
	last    map[string]float64
	lastPID map[string]int
	rss     map[string]int64
	pids    func() map[string]int
	stop    chan struct{}
}

func newCPUMeter(pids func() map[string]int) *cpuMeter {
	m := &cpuMeter{done: map[string]float64{}, last: map[string]float64{}, lastPID: map[string]int{}, rss: map[string]int64{},
		pids: pids, stop: make(chan struct{})}
	go m.loop()
	return m
}

func (m *cpuMeter) loop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m.sample()
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

func (m *cpuMeter) sample() {
	for name, pid := range m.pids() {
		cpu, rss, err := procStat(pid)
		if err != nil {
			continue
		}
		m.mu.Lock()
		if m.lastPID[name] != pid {
			m.done[name] += m.last[name]
			m.lastPID[name] = pid
		}
		m.last[name], m.rss[name] = cpu, rss
		m.mu.Unlock()
	}
}

// selfCPU is the harness process's own CPU seconds (getrusage).
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// report prints CPU seconds per process, its share of the run's wall time,
// and resident memory.
func (m *cpuMeter) report(w io.Writer, names []string, wall time.Duration, selfStart float64) {
	m.sample()
	close(m.stop)
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(w, "cpu over %.1f s wall (2 cores = 200%%):\n", wall.Seconds())
	for _, n := range names {
		cpu := m.done[n] + m.last[n]
		fmt.Fprintf(w, "  %-10s cpu_s=%7.1f (%5.1f%%) rss_mib=%6.1f\n", n, cpu, 100*cpu/wall.Seconds(), float64(m.rss[n])/(1<<20))
	}
	self := selfCPU() - selfStart
	fmt.Fprintf(w, "  %-10s cpu_s=%7.1f (%5.1f%%)  (simulated hypervisors, load, checks)\n", "harness", self, 100*self/wall.Seconds())
}
