<#
.SYNOPSIS
    On a power event, asks the training run to save an emergency checkpoint and stop: Ctrl-Break to
    the trainer's console process group, never Stop-Process (which would kill it mid-step, unsaved).

.DESCRIPTION
    CheckpointManager (pid_file=...) writes the trainer's process id to a pid file and handles
    SIGBREAK (Ctrl-Break) like SIGINT: at the next safe point between two steps it writes an
    emergency checkpoint, then stops. This script waits for what precedes a power loss:

      - Windows entering sleep (Win32_PowerManagementEvent, EventType 4);
      - the machine on battery (a laptop unplugged, a UPS after a mains failure) with the charge at
        or below -BatteryPercent (checked on every power status change and every -PollSeconds).

    Then it reads the pid file, attaches to the trainer's console and sends CTRL_BREAK_EVENT to the
    trainer's process group (GenerateConsoleCtrlEvent), once per run of the trainer.

    The trainer must lead its own process group: start it in its own console window
    (Start-Process python -ArgumentList 'train.py'; a new console starts a new process group whose id
    is the trainer's pid). If it was started through a launcher (py.exe, a batch file), pass
    -WholeConsole: every process on the trainer's console then gets the Ctrl-Break.

.EXAMPLE
    powershell -NoProfile -ExecutionPolicy Bypass -File ckpt-sync-power-hook.ps1 -PidFile C:\train\logs\training.pid

.EXAMPLE
    # Check the wiring now: the trainer should print "[EMERGENCY] SIGBREAK received" and save.
    powershell -NoProfile -ExecutionPolicy Bypass -File ckpt-sync-power-hook.ps1 -PidFile C:\train\logs\training.pid -Now
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$PidFile,
    [int]$BatteryPercent = 20,
    [int]$PollSeconds = 60,
    [switch]$WholeConsole,
    [switch]$Now
)

$ErrorActionPreference = 'Stop'

Add-Type -TypeDefinition @'
using System;
using System.Runtime.InteropServices;

public static class CkptSyncConsole
{
    const uint CTRL_BREAK_EVENT = 1;

    delegate bool HandlerRoutine(uint ctrlType);

    [DllImport("kernel32.dll", SetLastError = true)] static extern bool AttachConsole(uint processId);
    [DllImport("kernel32.dll", SetLastError = true)] static extern bool FreeConsole();
    [DllImport("kernel32.dll", SetLastError = true)] static extern bool SetConsoleCtrlHandler(HandlerRoutine handler, bool add);
    [DllImport("kernel32.dll", SetLastError = true)] static extern bool GenerateConsoleCtrlEvent(uint ctrlEvent, uint processGroupId);

    // This process attaches to the trainer's console to send the event: it must not end on it itself.
    static readonly HandlerRoutine Survive = ctrlType => true;

    public static void SendCtrlBreak(uint trainerPid, bool wholeConsole)
    {
        FreeConsole();
        if (!AttachConsole(trainerPid))
            throw new InvalidOperationException("cannot attach to the console of process " + trainerPid +
                " (error " + Marshal.GetLastWin32Error() + "): is it a console program still running?");
        try
        {
            SetConsoleCtrlHandler(Survive, true);
            if (!GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, wholeConsole ? 0u : trainerPid))
                throw new InvalidOperationException("GenerateConsoleCtrlEvent failed (error " +
                    Marshal.GetLastWin32Error() + ")");
            System.Threading.Thread.Sleep(500);  // the event is delivered on a thread of the trainer
        }
        finally
        {
            FreeConsole();
            SetConsoleCtrlHandler(Survive, false);
        }
    }
}
'@

function Read-TrainerPid {
    if (-not (Test-Path -LiteralPath $PidFile)) { return $null }
    $text = (Get-Content -LiteralPath $PidFile -Raw).Trim()
    $trainerPid = 0
    if (-not [int]::TryParse($text, [ref]$trainerPid)) { return $null }
    if (-not (Get-Process -Id $trainerPid -ErrorAction SilentlyContinue)) { return $null }  # a stale file
    return $trainerPid
}

$script:signalled = @{}  # trainer pid -> already asked to stop (once per run)

function Send-EmergencySave([string]$why) {
    $trainerPid = Read-TrainerPid
    if ($null -eq $trainerPid) {
        Write-Host "ckpt-sync power hook: $why, but no running trainer in $PidFile"
        return
    }
    if ($script:signalled.ContainsKey($trainerPid)) { return }
    Write-Host "ckpt-sync power hook: $why; Ctrl-Break to the trainer (pid $trainerPid) for an emergency checkpoint"
    [CkptSyncConsole]::SendCtrlBreak([uint32]$trainerPid, [bool]$WholeConsole)
    $script:signalled[$trainerPid] = $true
}

function Test-BatteryLow {
    foreach ($battery in @(Get-CimInstance -ClassName Win32_Battery -ErrorAction SilentlyContinue)) {
        # BatteryStatus 1: discharging (on battery); EstimatedChargeRemaining: percent.
        if ($battery.BatteryStatus -eq 1 -and $battery.EstimatedChargeRemaining -le $BatteryPercent) {
            return "on battery at $($battery.EstimatedChargeRemaining)%"
        }
    }
    return $null
}

if ($Now) {
    Send-EmergencySave 'asked to (-Now)'
    exit 0
}

Register-CimIndicationEvent -ClassName Win32_PowerManagementEvent -SourceIdentifier CkptSyncPower | Out-Null
Write-Host "ckpt-sync power hook: watching power events for the trainer in $PidFile"
try {
    while ($true) {
        $fired = Wait-Event -SourceIdentifier CkptSyncPower -Timeout $PollSeconds
        if ($fired) {
            $type = $fired.SourceEventArgs.NewEvent.EventType
            Remove-Event -EventIdentifier $fired.EventIdentifier
            if ($type -eq 4) { Send-EmergencySave 'Windows is entering sleep'; continue }
        }
        $low = Test-BatteryLow
        if ($low) { Send-EmergencySave $low }
    }
}
finally {
    Unregister-Event -SourceIdentifier CkptSyncPower -ErrorAction SilentlyContinue
}
