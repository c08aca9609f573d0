/* mintrace OUT -- COMMAND ARGS: trace COMMAND's syscall entries into OUT (binary records). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "mintrace.skel.h"

static FILE *out;
static long records;

static int on_record(void *ctx, void *data, size_t len)
{
	fwrite(data, len, 1, out);
	records++;
	return 0;
}

int main(int argc, char **argv)
{
	struct mintrace_bpf *skel;
	struct ring_buffer *rb;
	int pipefd[2], status = 0, done = 0;
	__u32 key = 0, pid;

	if (argc < 4 || strcmp(argv[2], "--")) {
		fprintf(stderr, "usage: mintrace OUT -- COMMAND ARGS\n");
		return 2;
	}
	out = fopen(argv[1], "wb");
	skel = mintrace_bpf__open_and_load();
	if (!out || !skel || mintrace_bpf__attach(skel)) {
		fprintf(stderr, "mintrace: cannot load or attach\n");
		return 1;
	}
	rb = ring_buffer__new(bpf_map__fd(skel->maps.rb), on_record, NULL, NULL);
	if (pipe(pipefd))
		return 1;
	pid = fork();
	if (pid == 0) {
		char c;

		close(pipefd[1]);
		if (read(pipefd[0], &c, 1) == 1)
			execv(argv[3], argv + 3);
		_exit(127);
	}
	bpf_map_update_elem(bpf_map__fd(skel->maps.target), &key, &pid, BPF_ANY);
	if (write(pipefd[1], "x", 1) != 1)
		return 1;
	while (!done) {
		ring_buffer__poll(rb, 10); /* no wakeups are sent: this is a 10 ms timer */
		done = waitpid(pid, &status, WNOHANG) == (int)pid;
	}
	ring_buffer__consume(rb);
	fclose(out);
	fprintf(stderr, "mintrace: %ld records, %llu lost\n", records, (unsigned long long)skel->bss->lost);
	ring_buffer__free(rb);
	mintrace_bpf__destroy(skel);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
