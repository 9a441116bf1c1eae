package snapshot

// LastScheduling is how the worker of wk's last job was scheduled: its
// policy (0 = SCHED_OTHER) and nice value.
func LastScheduling(wk *Worker) (policy, nice int) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.last.Policy, wk.last.Nice
}
